// maps.cc — parsers and lookups for the sendmail map formats.
#include "mx/ingress/maps.h"

#include <arpa/inet.h>
#include <crypt.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <functional>
#include <set>

#include "mx/common/address.h"
#include "mx/common/map_file.h"

namespace mx::ingress {
namespace {

Status Err(const std::string& name, int line, const std::string& what) {
  return MapError(name, line, what);
}

bool IsDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

bool ValidDomain(std::string_view d) {
  if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.' || d.find("..") != std::string_view::npos) {
    return false;
  }
  return std::all_of(d.begin(), d.end(),
                     [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80; });
}

// "a.b.c" → 3 octets; false unless 1–4 decimal octets <= 255.
bool ParseIpv4Prefix(std::string_view s, std::vector<int>* octets) {
  octets->clear();
  size_t pos = 0;
  while (true) {
    size_t dot = s.find('.', pos);
    auto part = s.substr(pos, dot == std::string_view::npos ? std::string_view::npos : dot - pos);
    if (!IsDigits(part) || part.size() > 3) return false;
    int v = std::stoi(std::string(part));
    if (v > 255) return false;
    octets->push_back(v);
    if (dot == std::string_view::npos) break;
    pos = dot + 1;
  }
  return !octets->empty() && octets->size() <= 4;
}

std::string NormalizeIpv6(std::string_view s) {
  in6_addr a{};
  if (inet_pton(AF_INET6, std::string(s).c_str(), &a) != 1) return {};
  char buf[INET6_ADDRSTRLEN];
  return inet_ntop(AF_INET6, &a, buf, sizeof buf) ? std::string(buf) : std::string();
}

}  // namespace

Result<std::string> NormalizeReply(std::string_view text, std::string_view default_tail,
                                   std::string_view default_text) {
  text = Trim(text);
  if (text.size() < 3 || !IsDigits(text.substr(0, 3)) || (text[0] != '4' && text[0] != '5')) {
    return Status(Code::kInvalidArgument, "reply must start with a 4xx or 5xx code, got '" + std::string(text) + "'");
  }
  if (text.size() > 3 && text[3] != ' ')
    return Status(Code::kInvalidArgument, "reply code must be followed by a space");
  std::string code(text.substr(0, 3));
  std::string_view rest = text.size() > 3 ? Trim(text.substr(4)) : std::string_view();
  std::string dsn;
  auto sp = rest.find(' ');
  std::string_view first = rest.substr(0, sp);
  // An enhanced status code: class.subject.detail, class matching the reply.
  if (first.size() >= 5 && std::isdigit(static_cast<unsigned char>(first[0])) && first[1] == '.') {
    size_t d2 = first.find('.', 2);
    if (d2 == std::string_view::npos || !IsDigits(first.substr(2, d2 - 2)) || !IsDigits(first.substr(d2 + 1))) {
      return Status(Code::kInvalidArgument, "bad enhanced status code '" + std::string(first) + "'");
    }
    if (first[0] != code[0]) {
      return Status(Code::kInvalidArgument,
                    "enhanced status code " + std::string(first) + " does not match reply code " + code);
    }
    dsn = std::string(first);
    rest = sp == std::string_view::npos ? std::string_view() : Trim(rest.substr(sp));
  } else {
    dsn = std::string(1, code[0]) + "." + std::string(default_tail);
  }
  for (unsigned char c : rest) {
    if (c < ' ' || c == 0x7f) return Status(Code::kInvalidArgument, "control character in reply text");
  }
  return code + " " + dsn + " " + std::string(rest.empty() ? default_text : rest);
}

namespace {

// "error:5.1.1:550 text", "error:550 text", "error:\"550 5.1.1 text\"".
Result<std::string> ParseErrorTarget(std::string_view v, std::string_view default_tail, std::string_view default_text) {
  std::string_view rest = v.substr(v.find(':') + 1);
  // sendmail's named exit codes: "error:nouser text", "error:tempfail text".
  auto word_end = rest.find_first_of(" \t");
  std::string word = ToLower(rest.substr(0, word_end));
  if (word == "nouser" || word == "unavailable" || word == "tempfail") {
    std::string_view text = word_end == std::string_view::npos ? std::string_view() : Trim(rest.substr(word_end));
    if (text.size() >= 3 && IsDigits(text.substr(0, 3))) return NormalizeReply(text, default_tail, default_text);
    std::string code = word == "nouser" ? "550 5.1.1 " : word == "tempfail" ? "451 4.3.0 " : "550 5.0.0 ";
    return NormalizeReply(code + std::string(text.empty() ? default_text : text), default_tail, default_text);
  }
  if (!rest.empty() && rest.front() == '"') {
    if (rest.size() < 2 || rest.back() != '"') return Status(Code::kInvalidArgument, "unterminated quoted reply");
    return NormalizeReply(rest.substr(1, rest.size() - 2), default_tail, default_text);
  }
  // sendmail's "D.S.N:code text" form.
  auto colon = rest.find(':');
  if (colon != std::string_view::npos && colon >= 5 && rest[1] == '.') {
    std::string_view dsn = rest.substr(0, colon), reply = Trim(rest.substr(colon + 1));
    if (reply.size() < 3) return Status(Code::kInvalidArgument, "missing reply code after '" + std::string(dsn) + ":'");
    std::string merged = std::string(reply.substr(0, 3)) + " " + std::string(dsn);
    if (reply.size() > 3) merged += " " + std::string(Trim(reply.substr(3)));
    return NormalizeReply(merged, default_tail, default_text);
  }
  return NormalizeReply(rest, default_tail, default_text);
}

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && ToLower(s.substr(0, prefix.size())) == prefix;
}

}  // namespace

const char* AccessActionName(AccessAction a) {
  switch (a) {
    case AccessAction::kOk: return "OK";
    case AccessAction::kRelay: return "RELAY";
    case AccessAction::kReject: return "REJECT";
    case AccessAction::kDiscard: return "DISCARD";
    case AccessAction::kError: return "ERROR";
    case AccessAction::kSkip: return "SKIP";
  }
  return "?";
}

Result<AccessEntry> ParseAccessValue(std::string_view value) {
  AccessEntry e;
  std::string upper = ToLower(value);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (upper == "OK") {
    e.action = AccessAction::kOk;
  } else if (upper == "RELAY") {
    e.action = AccessAction::kRelay;
  } else if (upper == "REJECT") {
    e.action = AccessAction::kReject;
  } else if (upper == "DISCARD") {
    e.action = AccessAction::kDiscard;
  } else if (upper == "SKIP") {
    e.action = AccessAction::kSkip;
  } else if (StartsWithNoCase(value, "error:")) {
    auto r = ParseErrorTarget(value, "7.1", "Access denied");
    if (!r.ok()) return r.status();
    e.action = AccessAction::kError;
    e.reply = *r;
  } else if (value.size() >= 3 && IsDigits(value.substr(0, 3))) {
    auto r = NormalizeReply(value, "7.1", "Access denied");
    if (!r.ok()) return r.status();
    e.action = AccessAction::kError;
    e.reply = *r;
  } else {
    return Status(Code::kInvalidArgument, "unknown action '" + std::string(value) +
                                              "' (use OK, RELAY, REJECT, DISCARD, SKIP or ERROR:\"550 5.7.1 text\")");
  }
  return e;
}

// ---- access ------------------------------------------------------------------

Result<AccessMap> AccessMap::Parse(std::string_view text, const std::string& name) {
  AccessMap m;
  std::unordered_map<std::string, int> first_line;
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    auto [raw_key, value] = SplitMapKey(line);
    if (value.empty()) return Err(name, n, "missing value for key '" + std::string(raw_key) + "'");
    auto parsed = ParseAccessValue(value);
    if (!parsed.ok()) return Err(name, n, parsed.status().message());
    AccessEntry entry = *parsed;
    entry.key = std::string(raw_key);
    entry.line = n;

    // Tag: a purely alphabetic word before the first ':' ("IPv6:" is part of the key).
    std::string tag;
    std::string_view key = raw_key;
    auto colon = key.find(':');
    if (colon != std::string_view::npos && colon > 0 &&
        std::all_of(key.begin(), key.begin() + colon, [](unsigned char c) { return std::isalpha(c); })) {
      tag = ToLower(key.substr(0, colon));
      if (tag != "connect" && tag != "from" && tag != "to") {
        return Err(name, n,
                   "unsupported tag '" + std::string(key.substr(0, colon + 1)) + "' (use Connect:, From:, To:)");
      }
      key = key.substr(colon + 1);
    }
    if (StartsWithNoCase(key, "ipv6:")) key = key.substr(5);
    if (key.empty()) return Err(name, n, "empty key");

    std::string norm;
    bool connect_like = tag.empty() || tag == "connect";
    std::vector<int> octets;
    if (connect_like && key.find('/') != std::string_view::npos) {
      auto net = Cidr::Parse(key);
      if (!net.ok()) return Err(name, n, net.status().message());
      int prefix = std::stoi(std::string(key.substr(key.find('/') + 1)));
      m.cidrs_.push_back(CidrEntry{*net, prefix, !tag.empty(), entry});
      return Status::Ok();
    }
    if (connect_like && ParseIpv4Prefix(key, &octets)) {
      if (octets.size() < 4) {  // sendmail network prefix "10.1" = 10.1.0.0/16
        std::string net;
        for (size_t i = 0; i < 4; ++i) net += (i ? "." : "") + std::to_string(i < octets.size() ? octets[i] : 0);
        int prefix = static_cast<int>(octets.size()) * 8;
        m.cidrs_.push_back(CidrEntry{*Cidr::Parse(net + "/" + std::to_string(prefix)), prefix, !tag.empty(), entry});
        return Status::Ok();
      }
      norm = std::string(key);
    } else if (connect_like && key.find(':') != std::string_view::npos) {
      norm = NormalizeIpv6(key);
      if (norm.empty()) return Err(name, n, "bad IPv6 address '" + std::string(key) + "'");
    } else if (key == "<>") {
      if (tag == "connect") return Err(name, n, "'<>' is only meaningful with From:");
      norm = "<>";
    } else {
      norm = ToLower(key);
      auto at = norm.rfind('@');
      std::string_view domain =
          at == std::string::npos ? std::string_view(norm) : std::string_view(norm).substr(at + 1);
      if (tag == "connect" && at != std::string::npos) {
        return Err(name, n, "Connect: keys are addresses, networks or host names, not '" + std::string(key) + "'");
      }
      if (!domain.empty() && !ValidDomain(domain)) return Err(name, n, "bad domain in key '" + std::string(key) + "'");
      if (at == 0 && domain.empty()) return Err(name, n, "bad key '" + std::string(key) + "'");
    }
    std::string full = tag + ":" + norm;
    if (auto [it, fresh] = first_line.emplace(full, n); !fresh) {
      return Err(name, n,
                 "duplicate key '" + std::string(raw_key) + "' (first at line " + std::to_string(it->second) + ")");
    }
    m.exact_.emplace(std::move(full), std::move(entry));
    return Status::Ok();
  });
  if (!st.ok()) return st;
  std::stable_sort(m.cidrs_.begin(), m.cidrs_.end(), [](const CidrEntry& a, const CidrEntry& b) {
    return a.prefix != b.prefix ? a.prefix > b.prefix : a.tagged > b.tagged;
  });
  return m;
}

const AccessEntry* AccessMap::Find(std::string_view tag, std::string_view key) const {
  std::string k;
  k.reserve(tag.size() + key.size() + 1);
  k.append(tag).append(":").append(key);
  if (auto it = exact_.find(k); it != exact_.end()) return &it->second;
  if (auto it = exact_.find(":" + std::string(key)); it != exact_.end()) return &it->second;
  return nullptr;
}

const AccessEntry* AccessMap::LookupConnect(std::string_view ip, std::string_view hostname) const {
  if (!ip.empty()) {
    std::string v6 = ip.find(':') != std::string_view::npos ? NormalizeIpv6(ip) : std::string();
    if (const auto* e = Find("connect", v6.empty() ? ip : std::string_view(v6))) return e;
    for (const auto& c : cidrs_) {
      if (c.net.Contains(ip)) return &c.entry;
    }
  }
  if (!hostname.empty() && hostname != "unknown") {
    std::string h = ToLower(hostname);
    for (std::string_view d = h;;) {
      if (const auto* e = Find("connect", d)) return e;
      auto dot = d.find('.');
      if (dot == std::string_view::npos) break;
      d = d.substr(dot + 1);
    }
  }
  return nullptr;
}

const AccessEntry* AccessMap::LookupAddress(std::string_view tag, std::string_view address) const {
  std::string t = ToLower(tag);
  if (address.empty()) return Find(t, "<>");
  std::string a = ToLower(address);
  auto at = a.rfind('@');
  std::string local = at == std::string::npos ? a : a.substr(0, at);
  std::string domain = at == std::string::npos ? std::string() : a.substr(at + 1);
  std::string user = local.substr(0, local.find('+'));
  if (const auto* e = Find(t, a)) return e;
  if (user != local && !domain.empty()) {
    if (const auto* e = Find(t, user + "@" + domain)) return e;
  }
  for (std::string_view d = domain; !d.empty();) {
    if (const auto* e = Find(t, d)) return e;
    auto dot = d.find('.');
    if (dot == std::string_view::npos) break;
    d = d.substr(dot + 1);
  }
  if (const auto* e = Find(t, local + "@")) return e;
  if (user != local) return Find(t, user + "@");
  return nullptr;
}

// ---- aliases ------------------------------------------------------------------

Result<AliasMap> AliasMap::Parse(std::string_view text, const std::string& name) {
  AliasMap m;
  std::string current;
  auto add_targets = [&](int n, std::string_view list) -> Status {
    Entry& e = m.entries_[current];
    size_t pos = 0;
    while (pos <= list.size()) {
      size_t comma = list.find(',', pos);
      std::string_view t =
          Trim(list.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos));
      pos = comma == std::string_view::npos ? list.size() + 1 : comma + 1;
      if (!t.empty() && t.front() == '<' && t.back() == '>') t = t.substr(1, t.size() - 2);
      if (t.empty()) continue;
      if (t.front() == '|' || t.starts_with("\"|"))
        return Err(name, n, "program aliases are not supported: " + std::string(t));
      if (t.front() == '/' || t.starts_with("\"/"))
        return Err(name, n, "file aliases are not supported: " + std::string(t));
      if (StartsWithNoCase(t, ":include:")) return Err(name, n, ":include: lists are not supported");
      if (StartsWithNoCase(t, "error:")) {
        // The rest of the line is the error text (it may contain commas).
        std::string_view whole = Trim(list.substr(list.find(t)));
        auto r = ParseErrorTarget(whole, "1.1", "User unknown");
        if (!r.ok()) return Err(name, n, r.status().message());
        e.targets.push_back("error:" + *r);
        return Status::Ok();
      }
      std::string target(t);
      if (ToLower(t).ends_with(".redirect")) {
        std::string addr(t.substr(0, t.size() - 9));
        if (addr.find('@') == std::string::npos) {
          return Err(name, n, "redirect target needs a full address: " + std::string(t));
        }
        target = addr + ".REDIRECT";
      }
      e.targets.push_back(std::move(target));
    }
    return Status::Ok();
  };
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    if (line.front() == ' ' || line.front() == '\t') {
      if (current.empty()) return Err(name, n, "continuation line without an alias");
      return add_targets(n, line);
    }
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return Err(name, n, "missing ':' after the alias name");
    std::string key = ToLower(Trim(line.substr(0, colon)));
    if (key.empty() || key.find_first_of(" \t@") != std::string::npos) {
      return Err(name, n, "bad alias name '" + key + "'");
    }
    if (auto it = m.entries_.find(key); it != m.entries_.end()) {
      return Err(name, n, "duplicate alias '" + key + "' (first at line " + std::to_string(it->second.line) + ")");
    }
    current = key;
    m.entries_[current].line = n;
    return add_targets(n, line.substr(colon + 1));
  });
  if (!st.ok()) return st;
  // Every bare name must be another alias; no alias may reach itself.
  for (const auto& [key, e] : m.entries_) {
    if (e.targets.empty()) return Err(name, e.line, "alias '" + key + "' has no targets");
    for (const auto& t : e.targets) {
      if (t.find('@') == std::string::npos && !t.starts_with("error:") && !m.entries_.count(ToLower(t))) {
        return Err(name, e.line, "'" + t + "' is neither an address nor an alias");
      }
    }
  }
  std::map<std::string, int> color;  // 1 = on the stack, 2 = done
  std::function<Status(const std::string&)> visit = [&](const std::string& k) -> Status {
    color[k] = 1;
    for (const auto& t : m.entries_[k].targets) {
      if (t.find('@') != std::string::npos || t.starts_with("error:")) continue;
      std::string next = ToLower(t);
      if (color[next] == 1) return Err(name, m.entries_[k].line, "alias loop through '" + next + "'");
      if (color[next] == 0) {
        if (Status s = visit(next); !s.ok()) return s;
      }
    }
    color[k] = 2;
    return Status::Ok();
  };
  for (const auto& [key, e] : m.entries_) {
    if (color[key] == 0) {
      if (Status s = visit(key); !s.ok()) return s;
    }
  }
  return m;
}

const AliasMap::Entry* AliasMap::Find(std::string_view local) const {
  auto it = entries_.find(ToLower(local));
  return it == entries_.end() ? nullptr : &it->second;
}

// ---- virtusertable ----------------------------------------------------------

Result<VirtuserTable> VirtuserTable::Parse(std::string_view text, const std::string& name) {
  VirtuserTable t;
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    auto [key, target] = SplitMapKey(line);
    if (target.empty()) return Err(name, n, "missing target for '" + std::string(key) + "'");
    std::string k = ToLower(key);
    auto at = k.rfind('@');
    if (at == std::string::npos)
      return Err(name, n, "key must be user@domain or @domain, got '" + std::string(key) + "'");
    std::string domain = k.substr(at + 1);
    if (!ValidDomain(domain)) return Err(name, n, "bad domain in key '" + std::string(key) + "'");
    std::string value(target);
    if (StartsWithNoCase(target, "error:")) {
      auto r = ParseErrorTarget(target, "1.1", "User unknown");
      if (!r.ok()) return Err(name, n, r.status().message());
      value = "error:" + *r;
    } else if (target.find_first_of(" \t") != std::string_view::npos) {
      return Err(name, n, "one target per line (use an alias for lists): '" + std::string(target) + "'");
    } else if (ToLower(target).ends_with(".redirect") && target.find('@') == std::string_view::npos) {
      return Err(name, n, "redirect target needs a full address: " + std::string(target));
    }
    if (auto it = t.entries_.find(k); it != t.entries_.end()) {
      return Err(name, n,
                 "duplicate key '" + std::string(key) + "' (first at line " + std::to_string(it->second.line) + ")");
    }
    t.entries_.emplace(k, Entry{std::string(key), std::move(value), n});
    t.domains_.insert(domain);
    return Status::Ok();
  });
  if (!st.ok()) return st;
  return t;
}

std::optional<VirtuserTable::Entry> VirtuserTable::Lookup(std::string_view address) const {
  std::string a = ToLower(address);
  auto at = a.rfind('@');
  if (at == std::string::npos) return std::nullopt;
  std::string local = a.substr(0, at), domain = a.substr(at + 1);
  auto plus = local.find('+');
  std::string user = local.substr(0, plus);
  std::string detail = plus == std::string::npos ? std::string() : local.substr(plus + 1);
  const Entry* hit = nullptr;
  auto find = [&](const std::string& k) {
    if (hit) return;
    if (auto it = entries_.find(k); it != entries_.end()) hit = &it->second;
  };
  find(a);
  if (plus != std::string::npos) {
    find(user + "+*@" + domain);
    find(user + "@" + domain);
  }
  find("@" + domain);
  if (!hit) return std::nullopt;
  Entry e = *hit;
  if (!e.target.starts_with("error:")) {
    std::string out;
    for (size_t i = 0; i < e.target.size(); ++i) {
      if (e.target[i] == '%' && i + 1 < e.target.size() && e.target[i + 1] >= '1' && e.target[i + 1] <= '3') {
        char c = e.target[++i];
        out += c == '1' ? user : c == '2' ? detail : (detail.empty() ? "" : "+" + detail);
      } else {
        out.push_back(e.target[i]);
      }
    }
    e.target = std::move(out);
  }
  return e;
}

// ---- AUTH users ----------------------------------------------------------------

Result<AuthUsers> AuthUsers::Parse(std::string_view text, const std::string& name) {
  AuthUsers a;
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return Err(name, n, "expected user:hash");
    std::string user(Trim(line.substr(0, colon)));
    std::string hash(Trim(line.substr(colon + 1)));
    if (hash.size() < 4 || hash.front() != '$') {
      return Err(name, n, "password of '" + user + "' must be a crypt(3) hash (e.g. openssl passwd -6)");
    }
    crypt_data data{};
    const char* check = crypt_r("probe", hash.c_str(), &data);
    if (!check || check[0] == '*') return Err(name, n, "unsupported hash method for '" + user + "'");
    if (!a.users_.emplace(user, hash).second) return Err(name, n, "duplicate user '" + user + "'");
    return Status::Ok();
  });
  if (!st.ok()) return st;
  return a;
}

bool AuthUsers::Verify(std::string_view user, std::string_view password) const {
  // A fixed hash for unknown users keeps their timing like known ones'.
  static const std::string kDummy =
      "$6$mxdummysalt$0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
  auto it = users_.find(std::string(user));
  const std::string& hash = it == users_.end() ? kDummy : it->second;
  if (password.find('\0') != std::string_view::npos) return false;
  crypt_data data{};
  const char* out = crypt_r(std::string(password).c_str(), hash.c_str(), &data);
  if (!out || it == users_.end()) return false;
  size_t len = std::strlen(out);
  if (len != hash.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < len; ++i) diff |= static_cast<unsigned char>(out[i] ^ hash[i]);
  return diff == 0;
}

// ---- class files -------------------------------------------------------------

Result<std::vector<std::string>> ParseClassFile(std::string_view text, const std::string& name) {
  std::vector<std::string> out;
  Status st = ForEachMapLine(text, [&](int n, std::string_view line) -> Status {
    if (IsMapComment(line)) return Status::Ok();
    auto t = Trim(line);
    if (auto hash = t.find('#'); hash != std::string_view::npos) t = Trim(t.substr(0, hash));
    if (t.find_first_of(" \t") != std::string_view::npos) return Err(name, n, "one name per line");
    std::string d = ToLower(t);
    if (!ValidDomain(d)) return Err(name, n, "bad domain name '" + std::string(t) + "'");
    out.push_back(std::move(d));
    return Status::Ok();
  });
  if (!st.ok()) return st;
  return out;
}

}  // namespace mx::ingress
