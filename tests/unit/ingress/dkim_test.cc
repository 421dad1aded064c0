// dkim_test.cc — the relaxed canonical forms against RFC 6376's own example,
// From: domains, signing-domain choice, key loading errors, and signatures
// checked with OpenSSL over data this test builds by hand. (The functional
// test verifies real signatures with dkimpy, an independent verifier.)
#include "mx/ingress/dkim.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>

#include "mx/common/base64.h"

namespace mx::ingress {
namespace {

// A temporary PEM private key file of the given type.
class KeyFile {
 public:
  KeyFile(const char* type, size_t rsa_bits = 2048) {
    pkey_ = std::string(type) == "RSA"  ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", rsa_bits)
            : std::string(type) == "EC" ? EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")
                                        : EVP_PKEY_Q_keygen(nullptr, nullptr, type);
    path_ = (std::filesystem::temp_directory_path() /
             ("mx-dkim-" + std::to_string(getpid()) + "-" + std::to_string(counter_++) + ".pem"))
                .string();
    FILE* f = fopen(path_.c_str(), "w");
    PEM_write_PrivateKey(f, pkey_, nullptr, nullptr, 0, nullptr, nullptr);
    fclose(f);
  }
  ~KeyFile() {
    EVP_PKEY_free(pkey_);
    std::filesystem::remove(path_);
  }
  const std::string& path() const { return path_; }
  EVP_PKEY* pkey() const { return pkey_; }

 private:
  static inline int counter_ = 0;
  EVP_PKEY* pkey_;
  std::string path_;
};

// Tag values of a DKIM-Signature field (FWS removed).
std::map<std::string, std::string> Tags(std::string field) {
  field = field.substr(field.find(':') + 1);
  std::string flat;
  for (char c : field) {
    if (c != '\r' && c != '\n' && c != '\t' && c != ' ') flat += c;
  }
  std::map<std::string, std::string> tags;
  size_t pos = 0;
  while (pos < flat.size()) {
    size_t semi = flat.find(';', pos);
    if (semi == std::string::npos) semi = flat.size();
    std::string tag = flat.substr(pos, semi - pos);
    auto eq = tag.find('=');
    if (eq != std::string::npos) tags[tag.substr(0, eq)] = tag.substr(eq + 1);
    pos = semi + 1;
  }
  return tags;
}

std::string Sha256B64(const std::string& data) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), d);
  return Base64Encode(std::string_view(reinterpret_cast<const char*>(d), sizeof d));
}

// rsa-sha256 (PKCS#1 v1.5) or ed25519-sha256 (RFC 8463: Ed25519 over the SHA-256 hash).
bool Verifies(EVP_PKEY* key, const std::string& data, const std::string& sig) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  const auto* s = reinterpret_cast<const unsigned char*>(sig.data());
  int ok = 0;
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) {
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key, nullptr);
    EVP_PKEY_verify_init(ctx);
    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
    EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256());
    ok = EVP_PKEY_verify(ctx, s, sig.size(), digest, sizeof digest);
    EVP_PKEY_CTX_free(ctx);
  } else {
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    EVP_DigestVerifyInit(md, nullptr, nullptr, nullptr, key);
    ok = EVP_DigestVerify(md, s, sig.size(), digest, sizeof digest);
    EVP_MD_CTX_free(md);
  }
  return ok == 1;
}

std::shared_ptr<const DkimSigner> Load(const DkimConfig& c) {
  auto s = DkimSigner::Load(c);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? *s : nullptr;
}

TEST(DkimTest, RelaxedFormsMatchTheRfcExample) {
  // RFC 6376 3.4.5.
  EXPECT_EQ(DkimRelaxedHeader("A: X\r\n"), "a:X\r\n");
  EXPECT_EQ(DkimRelaxedHeader("B : Y\t\r\n\tZ  \r\n"), "b:Y Z\r\n");
  EXPECT_EQ(DkimRelaxedBody(" C \r\nD \t E\r\n\r\n\r\n"), " C\r\nD E\r\n");
}

TEST(DkimTest, RelaxedBodyEdges) {
  EXPECT_EQ(DkimRelaxedBody(""), "");
  EXPECT_EQ(DkimRelaxedBody("\r\n\r\n"), "");                         // only empty lines: empty
  EXPECT_EQ(DkimRelaxedBody("a\r\n\r\nb"), "a\r\n\r\nb\r\n");         // inner empty line kept, CRLF added
  EXPECT_EQ(DkimRelaxedBody("x \t \r\n   \r\ny"), "x\r\n\r\ny\r\n");  // a blank line is an empty line
}

TEST(DkimTest, FromDomainTakesTheFirstMailbox) {
  EXPECT_EQ(FromDomain(" alice@Example.COM"), "example.com");
  EXPECT_EQ(FromDomain(" \"Alice <a@evil.test>\" <alice@example.com>"), "example.com");
  EXPECT_EQ(FromDomain(" Alice (work@evil.test) <alice@example.com>"), "example.com");
  EXPECT_EQ(FromDomain(" alice@example.com (Alice), bob@other.test"), "example.com");
  EXPECT_EQ(FromDomain(" team: alice@example.com, bob@other.test;"), "example.com");
  EXPECT_EQ(FromDomain(" <alice@sub.example.com.>\r\n"), "sub.example.com");
  EXPECT_EQ(FromDomain(" undisclosed"), "");
  EXPECT_EQ(FromDomain(" <a@exa mple.com>"), "");
}

TEST(DkimTest, KeysAreChosenByFromDomainOrItsNearestParent) {
  KeyFile rsa("RSA"), ed("ED25519");
  DkimConfig c;
  c.keys = {{"Example.com", "s1", rsa.path()}, {"mail.example.com", "s2", ed.path()}};
  auto s = Load(c);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->DomainFor("example.com"), "example.com");
  EXPECT_EQ(s->DomainFor("news.example.com"), "example.com");
  EXPECT_EQ(s->DomainFor("a.mail.example.com"), "mail.example.com");
  EXPECT_EQ(s->DomainFor("example.org"), "");
  EXPECT_EQ(s->DomainFor("notexample.com"), "");
  auto none = s->Sign("", "Subject: no from\r\n\r\nbody\r\n", 1);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->headers.empty());
}

TEST(DkimTest, BadKeysAreRefusedWithTheKeyNamed) {
  KeyFile small("RSA", 512), ec("EC");
  DkimConfig c;
  c.keys = {{"example.com", "s", "/nonexistent/key.pem"}};
  auto r = DkimSigner::Load(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("ingress.dkim.keys[0]"), std::string::npos) << r.status().message();
  c.keys = {{"example.com", "s", small.path()}};
  r = DkimSigner::Load(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("1024"), std::string::npos) << r.status().message();
  c.keys = {{"example.com", "s", ec.path()}};
  r = DkimSigner::Load(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("RSA and Ed25519"), std::string::npos) << r.status().message();
  c.keys = {};
  c.headers = {"subject"};
  EXPECT_FALSE(DkimSigner::Load(c).ok());  // From: must be signed
}

// Builds, independently of the signer, the data a verifier hashes.
TEST(DkimTest, SignaturesVerifyOverTheHeadersTakenBottomUp) {
  KeyFile rsa("RSA"), ed("ED25519");
  DkimConfig c;
  c.keys = {{"example.com", "rsa1", rsa.path()}, {"example.com", "ed1", ed.path()}};
  c.headers = {"from", "subject", "to", "date"};
  c.signature_ttl = std::chrono::seconds(3600);
  auto s = Load(c);
  ASSERT_TRUE(s);
  const std::string prefix = "Message-ID: <id@x>\r\n";
  const std::string message =
      "Received: by relay\r\nSubject:  first\r\nFrom: Alice <alice@example.com>\r\nTo: b@example.net\r\n"
      "Subject: second\r\n\tfolded\r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
  auto r = s->Sign(prefix, message, 1700000000);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->domain, "example.com");
  ASSERT_EQ(r->algorithms, (std::vector<std::string>{"rsa-sha256", "ed25519-sha256"}));

  // Two fields, each folded to lines of at most 78 octets.
  const std::string& all = r->headers;
  size_t second = all.find("\r\nDKIM-Signature:");
  ASSERT_NE(second, std::string::npos);
  const std::string fields[] = {all.substr(0, second + 2), all.substr(second + 2)};
  for (const auto& f : fields) {
    size_t start = 0;
    for (size_t eol; (eol = f.find("\r\n", start)) != std::string::npos; start = eol + 2) {
      EXPECT_LE(eol - start, 78u) << f;
    }
  }
  for (int i = 0; i < 2; ++i) {
    auto tags = Tags(fields[i]);
    EXPECT_EQ(tags["v"], "1");
    EXPECT_EQ(tags["c"], "relaxed/relaxed");
    EXPECT_EQ(tags["d"], "example.com");
    EXPECT_EQ(tags["t"], "1700000000");
    EXPECT_EQ(tags["x"], "1700003600");
    // Present headers once per instance, plus once more (oversigned); Date is absent.
    EXPECT_EQ(tags["h"], "from:from:subject:subject:subject:to:to");
    EXPECT_EQ(tags["bh"], Sha256B64(" C\r\nD E\r\n"));
    // Bottom-up: the second Subject is hashed before the first; oversigned
    // names that ran out of instances add nothing.
    std::string data =
        "from:Alice <alice@example.com>\r\nsubject:second folded\r\nsubject:first\r\nto:b@example.net\r\n";
    std::string own = fields[i].substr(0, fields[i].find("\tb=") + 3);
    data += DkimRelaxedHeader(own);
    data.resize(data.size() - 2);  // the signature field's CRLF is not hashed
    const std::string sig = *Base64Decode(tags["b"]);
    EXPECT_EQ(tags["a"], i == 0 ? "rsa-sha256" : "ed25519-sha256");
    EXPECT_EQ(tags["s"], i == 0 ? "rsa1" : "ed1");
    EXPECT_TRUE(Verifies(i == 0 ? rsa.pkey() : ed.pkey(), data, sig)) << "signature " << i;
    // A changed header breaks it.
    data.replace(data.find("first"), 5, "FIRST");
    EXPECT_FALSE(Verifies(i == 0 ? rsa.pkey() : ed.pkey(), data, sig)) << "signature " << i;
  }
}

}  // namespace
}  // namespace mx::ingress
