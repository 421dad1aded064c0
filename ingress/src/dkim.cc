// dkim.cc — DKIM-Signature over relaxed/relaxed canonical forms, with OpenSSL.
#include "mx/ingress/dkim.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string_view>

#include "mx/common/address.h"
#include "mx/common/base64.h"

namespace mx::ingress {
namespace {

// What most signers cover (OpenDKIM's and KumoMTA's lists, plus the
// List-Unsubscribe pair RFC 8058 wants signed for one-click unsubscribe).
constexpr std::string_view kDefaultHeaders[] = {"from",
                                                "reply-to",
                                                "subject",
                                                "date",
                                                "to",
                                                "cc",
                                                "message-id",
                                                "in-reply-to",
                                                "references",
                                                "mime-version",
                                                "content-type",
                                                "content-transfer-encoding",
                                                "list-id",
                                                "list-unsubscribe",
                                                "list-unsubscribe-post",
                                                "feedback-id"};

bool Wsp(char c) {
  return c == ' ' || c == '\t';
}

std::string OpensslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

// Header fields in order (each with its continuation lines and CRLF);
// returns where the body starts (after the empty line).
size_t SplitHeaders(std::string_view msg, std::vector<std::string_view>* fields) {
  size_t pos = 0;
  while (pos < msg.size()) {
    size_t eol = msg.find('\n', pos);
    size_t next = eol == std::string_view::npos ? msg.size() : eol + 1;
    std::string_view line = msg.substr(pos, next - pos);
    if (line == "\r\n" || line == "\n") return next;
    if (Wsp(line.front())) {
      if (!fields->empty()) {
        auto& last = fields->back();
        last = std::string_view(last.data(), last.size() + line.size());
      }
    } else if (line.find(':') == std::string_view::npos) {
      return pos;  // no empty line: the body starts here
    } else {
      fields->push_back(line);
    }
    pos = next;
  }
  return pos;
}

std::string FieldName(std::string_view field) {
  auto colon = field.find(':');
  std::string_view name = field.substr(0, colon);
  while (!name.empty() && Wsp(name.back())) name.remove_suffix(1);
  return ToLower(name);
}

// Feeds the relaxed canonical body to out, line by line.
template <typename Out>
void RelaxBody(std::string_view body, Out&& out) {
  size_t empty_lines = 0;  // held back: emitted only if a non-empty line follows
  std::string buf;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find('\n', pos);
    size_t next = eol == std::string_view::npos ? body.size() : eol + 1;
    std::string_view line = body.substr(pos, next - pos);
    pos = next;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
    while (!line.empty() && Wsp(line.back())) line.remove_suffix(1);
    if (line.empty()) {
      ++empty_lines;
      continue;
    }
    for (; empty_lines > 0; --empty_lines) out(std::string_view("\r\n"));
    bool plain = true;  // no tab, no run of spaces: the line is already canonical
    for (size_t i = 0; i < line.size() && plain; ++i) {
      if (line[i] == '\t' || (line[i] == ' ' && i + 1 < line.size() && line[i + 1] == ' ')) plain = false;
    }
    if (plain) {
      out(line);
    } else {
      buf.clear();
      bool space = false;
      for (char c : line) {
        if (Wsp(c)) {
          space = true;
          continue;
        }
        if (space) buf += ' ';
        space = false;
        buf += c;
      }
      out(std::string_view(buf));
    }
    out(std::string_view("\r\n"));
  }
}

// Splits text into lines of at most width with "\r\n\t" between them.
std::string Fold(std::string_view text, size_t width) {
  std::string out;
  for (size_t i = 0; i < text.size(); i += width) {
    if (i) out += "\r\n\t";
    out.append(text.substr(i, width));
  }
  return out;
}

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

}  // namespace

std::string DkimRelaxedHeader(std::string_view field) {
  auto colon = field.find(':');
  if (colon == std::string_view::npos) return {};
  std::string out = FieldName(field);
  out += ':';
  bool space = false;
  bool any = false;
  for (char c : field.substr(colon + 1)) {
    if (c == '\r' || c == '\n') continue;  // unfold
    if (Wsp(c)) {
      space = true;
      continue;
    }
    if (space && any) out += ' ';
    space = false;
    any = true;
    out += c;
  }
  out += "\r\n";
  return out;
}

std::string DkimRelaxedBody(std::string_view body) {
  std::string out;
  RelaxBody(body, [&](std::string_view s) { out.append(s); });
  return out;
}

std::string FromDomain(std::string_view v) {
  // The first mailbox: its <addr-spec> if it has one, else the text up to a
  // comma; quoted strings and comments do not count.
  std::string spec;
  bool quoted = false, angle = false;
  int comment = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (quoted) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        quoted = false;
      }
      continue;
    }
    if (comment) {
      if (c == '(') ++comment;
      if (c == ')') --comment;
      continue;
    }
    if (c == '"') {
      quoted = true;
    } else if (c == '(') {
      comment = 1;
    } else if (c == '<') {
      spec.clear();
      angle = true;
    } else if (c == '>' && angle) {
      break;
    } else if ((c == ',' || c == ';') && !angle) {
      if (spec.find('@') != std::string::npos) break;
      spec.clear();  // a group name or an empty list element
    } else if (c == ':' && !angle) {
      spec.clear();  // "group: a@b.example;"
    } else {
      spec += c;
    }
  }
  auto at = spec.rfind('@');
  if (at == std::string::npos) return {};
  std::string domain = ToLower(Trim(spec.substr(at + 1)));
  while (!domain.empty() && (domain.back() == '.' || domain.back() == '\r' || domain.back() == '\n')) {
    domain.pop_back();
  }
  if (domain.empty()) return {};
  for (char c : domain) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') return {};
  }
  return domain;
}

struct DkimSigner::Key {
  std::string domain;  // lower-case
  std::string selector;
  std::string algorithm;  // rsa-sha256 | ed25519-sha256
  std::unique_ptr<EVP_PKEY, PkeyFree> pkey;
};

DkimSigner::DkimSigner(DkimSigner&&) noexcept = default;
DkimSigner::~DkimSigner() = default;

Result<std::shared_ptr<const DkimSigner>> DkimSigner::Load(const DkimConfig& config) {
  std::shared_ptr<DkimSigner> s(new DkimSigner());
  s->oversign_ = config.oversign;
  s->ttl_s_ = config.signature_ttl.count();
  if (config.headers.empty()) {
    s->headers_.assign(std::begin(kDefaultHeaders), std::end(kDefaultHeaders));
  } else {
    for (const auto& h : config.headers) s->headers_.push_back(ToLower(h));
  }
  if (std::find(s->headers_.begin(), s->headers_.end(), "from") == s->headers_.end()) {
    return Status(Code::kInvalidArgument, "ingress.dkim.headers: must include From (RFC 6376 5.4)");
  }
  for (size_t i = 0; i < config.keys.size(); ++i) {
    const auto& k = config.keys[i];
    const std::string where = "ingress.dkim.keys[" + std::to_string(i) + "] (" + k.key_file + ")";
    std::ifstream in(k.key_file);
    if (!in) return Status(Code::kInvalidArgument, where + ": cannot read the key file");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string pem = ss.str();
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    // A passphrase callback that declines: an encrypted key is an error, not a prompt.
    auto no_pass = [](char*, int, int, void*) { return 0; };
    EVP_PKEY* raw = PEM_read_bio_PrivateKey(bio, nullptr, no_pass, nullptr);
    BIO_free(bio);
    if (!raw) return Status(Code::kInvalidArgument, where + ": not a PEM private key (" + OpensslError() + ")");
    auto key = std::make_unique<Key>();
    key->pkey.reset(raw);
    key->domain = ToLower(k.domain);
    while (!key->domain.empty() && key->domain.back() == '.') key->domain.pop_back();
    key->selector = k.selector;
    switch (EVP_PKEY_get_base_id(raw)) {
      case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(raw) < 1024) {
          return Status(Code::kInvalidArgument, where + ": RSA keys under 1024 bits are refused (RFC 8301)");
        }
        key->algorithm = "rsa-sha256";
        break;
      case EVP_PKEY_ED25519: key->algorithm = "ed25519-sha256"; break;
      default: return Status(Code::kInvalidArgument, where + ": only RSA and Ed25519 keys can sign");
    }
    s->keys_.push_back(std::move(key));
  }
  return std::shared_ptr<const DkimSigner>(std::move(s));
}

std::string DkimSigner::DomainFor(std::string_view from_domain) const {
  std::string d(from_domain);
  while (!d.empty()) {
    for (const auto& k : keys_) {
      if (k->domain == d) return d;
    }
    auto dot = d.find('.');
    if (dot == std::string::npos) break;
    d.erase(0, dot + 1);
  }
  return {};
}

Result<DkimSigner::Signed> DkimSigner::Sign(std::string_view prefix, std::string_view message, int64_t now_unix) const {
  Signed result;
  if (keys_.empty()) return result;
  std::vector<std::string_view> fields;
  SplitHeaders(prefix, &fields);
  const size_t body_start = SplitHeaders(message, &fields);
  std::vector<std::string> names;
  names.reserve(fields.size());
  std::string from;
  for (auto f : fields) {
    names.push_back(FieldName(f));
    if (from.empty() && names.back() == "from") from = FromDomain(f.substr(f.find(':') + 1));
  }
  result.domain = DomainFor(from);
  if (result.domain.empty()) return result;

  // h=: every present header on the list as often as it is present, and
  // (oversigning) once more, so that none can be added after signing.
  std::vector<std::string> signed_names;
  for (const auto& h : headers_) {
    size_t n = static_cast<size_t>(std::count(names.begin(), names.end(), h));
    if (n == 0) continue;
    signed_names.insert(signed_names.end(), n + (oversign_ ? 1 : 0), h);
  }
  // RFC 6376 5.4.2: instances are taken from the bottom up.
  std::string canon_headers;
  {
    std::vector<bool> used(fields.size(), false);
    for (const auto& h : signed_names) {
      for (size_t i = fields.size(); i-- > 0;) {
        if (!used[i] && names[i] == h) {
          used[i] = true;
          canon_headers += DkimRelaxedHeader(fields[i]);
          break;
        }
      }
    }
  }
  std::string h_tag = "h=";
  size_t line = 3;
  for (size_t i = 0; i < signed_names.size(); ++i) {
    if (i) {
      h_tag += ':';
      ++line;
      if (line + signed_names[i].size() > 72) {
        h_tag += "\r\n\t";
        line = 1;
      }
    }
    h_tag += signed_names[i];
    line += signed_names[i].size();
  }

  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (!md || !EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr)) return Status(Code::kInternal, OpensslError());
  RelaxBody(message.substr(body_start), [&](std::string_view s) { EVP_DigestUpdate(md.get(), s.data(), s.size()); });
  if (!EVP_DigestFinal_ex(md.get(), digest, &digest_len)) return Status(Code::kInternal, OpensslError());
  const std::string bh = Base64Encode(std::string_view(reinterpret_cast<const char*>(digest), digest_len));

  for (const auto& key : keys_) {
    if (key->domain != result.domain) continue;
    std::string sig = "DKIM-Signature: v=1; a=" + key->algorithm + "; c=relaxed/relaxed;\r\n\td=" + key->domain +
                      "; s=" + key->selector + "; t=" + std::to_string(now_unix);
    if (ttl_s_ > 0) sig += "; x=" + std::to_string(now_unix + ttl_s_);
    sig.append(";\r\n\t").append(h_tag).append(";\r\n\tbh=").append(bh).append(";\r\n\tb=");
    // The hash: the signed headers, then this field with an empty b= and no CRLF.
    std::string own = DkimRelaxedHeader(sig);
    own.resize(own.size() - 2);
    if (!EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) ||
        !EVP_DigestUpdate(md.get(), canon_headers.data(), canon_headers.size()) ||
        !EVP_DigestUpdate(md.get(), own.data(), own.size()) || !EVP_DigestFinal_ex(md.get(), digest, &digest_len)) {
      return Status(Code::kInternal, OpensslError());
    }
    std::string signature;
    size_t sig_len = 0;
    if (key->algorithm == "rsa-sha256") {
      std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(EVP_PKEY_CTX_new(key->pkey.get(), nullptr),
                                                                      EVP_PKEY_CTX_free);
      if (!ctx || EVP_PKEY_sign_init(ctx.get()) <= 0 ||
          EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) <= 0 ||
          EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()) <= 0 ||
          EVP_PKEY_sign(ctx.get(), nullptr, &sig_len, digest, digest_len) <= 0) {
        return Status(Code::kInternal, "rsa-sha256: " + OpensslError());
      }
      signature.resize(sig_len);
      if (EVP_PKEY_sign(ctx.get(), reinterpret_cast<unsigned char*>(signature.data()), &sig_len, digest, digest_len) <=
          0) {
        return Status(Code::kInternal, "rsa-sha256: " + OpensslError());
      }
    } else {
      // RFC 8463: PureEdDSA over the SHA-256 hash.
      std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ed(EVP_MD_CTX_new(), EVP_MD_CTX_free);
      if (!ed || EVP_DigestSignInit(ed.get(), nullptr, nullptr, nullptr, key->pkey.get()) <= 0 ||
          EVP_DigestSign(ed.get(), nullptr, &sig_len, digest, digest_len) <= 0) {
        return Status(Code::kInternal, "ed25519-sha256: " + OpensslError());
      }
      signature.resize(sig_len);
      if (EVP_DigestSign(ed.get(), reinterpret_cast<unsigned char*>(signature.data()), &sig_len, digest, digest_len) <=
          0) {
        return Status(Code::kInternal, "ed25519-sha256: " + OpensslError());
      }
    }
    signature.resize(sig_len);
    sig += Fold(Base64Encode(signature), 72) + "\r\n";
    result.headers += sig;
    result.algorithms.push_back(key->algorithm);
  }
  return result;
}

}  // namespace mx::ingress
