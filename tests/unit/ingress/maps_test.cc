// maps_test.cc — sendmail map parsers: lookups in sendmail's order and
// file:line errors for every kind of bad line.
#include <gtest/gtest.h>

#include "../golden.h"
#include "mx/common/config.h"
#include "mx/ingress/maps.h"
#include "mx/ingress/policy.h"

namespace mx::ingress {
namespace {

AccessMap Access(const std::string& text) {
  auto m = AccessMap::Parse(text, "access");
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? *m : AccessMap();
}

std::string ActionOf(const AccessEntry* e) {
  return e ? std::string(AccessActionName(e->action)) + (e->reply.empty() ? "" : " " + e->reply) : "none";
}

TEST(AccessMap, ConnectMatchesIpPrefixCidrAndHostname) {
  auto m = Access(
      "Connect:10.1.2.3 OK\n"
      "Connect:10.1 REJECT\n"
      "Connect:192.0.2.0/25 RELAY\n"
      "192.0.2.0/24 DISCARD\n"
      "Connect:IPv6:2001:db8::1 RELAY\n"
      "Connect:bad.example REJECT\n");
  EXPECT_EQ(ActionOf(m.LookupConnect("10.1.2.3", "")), "OK");       // exact beats the /16 prefix
  EXPECT_EQ(ActionOf(m.LookupConnect("10.1.99.1", "")), "REJECT");  // sendmail octet prefix
  EXPECT_EQ(ActionOf(m.LookupConnect("10.2.0.1", "")), "none");
  EXPECT_EQ(ActionOf(m.LookupConnect("192.0.2.5", "")), "RELAY");  // /25 beats the untagged /24
  EXPECT_EQ(ActionOf(m.LookupConnect("192.0.2.200", "")), "DISCARD");
  EXPECT_EQ(ActionOf(m.LookupConnect("2001:db8:0::1", "")), "RELAY");  // normalized IPv6
  EXPECT_EQ(ActionOf(m.LookupConnect("198.51.100.1", "mx.bad.example")), "REJECT");
  EXPECT_EQ(ActionOf(m.LookupConnect("198.51.100.1", "notbad.example")), "none");
}

TEST(AccessMap, AddressLookupOrder) {
  auto m = Access(
      "From:alice@example.com OK\n"
      "From:example.com REJECT\n"
      "From:postmaster@ OK\n"
      "From:<> ERROR:\"550 5.7.1 no bounces\"\n"
      "To:list+*@example.net OK\n"
      "example.org RELAY\n");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "Alice@Example.COM")), "OK");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "alice+tag@example.com")), "OK");     // +detail stripped
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "bob@mail.example.com")), "REJECT");  // parent domain
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "postmaster@elsewhere.test")), "OK");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "")), "ERROR 550 5.7.1 no bounces");
  EXPECT_EQ(ActionOf(m.LookupAddress("To", "bob@example.com")), "none");     // From: keys only apply to From
  EXPECT_EQ(ActionOf(m.LookupAddress("To", "x@sub.example.org")), "RELAY");  // untagged applies to all
}

TEST(AccessMap, ErrorForms) {
  auto m = Access(
      "From:a@x.test ERROR:5.7.1:550 Go away\n"
      "From:b@x.test ERROR:550 No\n"
      "From:c@x.test 451 4.7.1 Later\n"
      "From:d@x.test ERROR:\"553 5.7.1 quoted, text\"\n");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "a@x.test")), "ERROR 550 5.7.1 Go away");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "b@x.test")), "ERROR 550 5.7.1 No");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "c@x.test")), "ERROR 451 4.7.1 Later");
  EXPECT_EQ(ActionOf(m.LookupAddress("From", "d@x.test")), "ERROR 553 5.7.1 quoted, text");
}

TEST(AccessMap, SyntaxErrorsNameFileAndLine) {
  struct Case {
    std::string text, error;
  };
  const Case cases[] = {
      {"# ok\nConnect:1.2.3.4\n", "access:2: missing value"},
      {"\n\nFrom:x@y.test MAYBE\n", "access:3: unknown action 'MAYBE'"},
      {"Spam:x@y.test REJECT\n", "access:1: unsupported tag 'Spam:'"},
      {"Connect:10.0.0.0/33 REJECT\n", "access:1: bad prefix length"},
      {"From:x@y.test ERROR:\"250 fine\"\n", "access:1: reply must start with a 4xx or 5xx code"},
      {"From:x@y.test ERROR:\"550 4.7.1 mismatch\"\n", "access:1: enhanced status code 4.7.1 does not match"},
      {"From:x@y.test OK\nFrom:X@Y.test REJECT\n", "access:2: duplicate key 'From:X@Y.test' (first at line 1)"},
      {"From:x@bad..domain OK\n", "access:1: bad domain"},
  };
  for (const auto& c : cases) {
    auto m = AccessMap::Parse(c.text, "access");
    ASSERT_FALSE(m.ok()) << c.text;
    EXPECT_NE(m.status().message().find(c.error), std::string::npos) << m.status().message();
  }
}

TEST(AliasMap, ParsesContinuationsAndRefusesUnsafeTargets) {
  auto a = AliasMap::Parse("team: a@x.test,\n  b@y.test, other\nother: c@z.test\n", "aliases");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_NE(a->Find("TEAM"), nullptr);
  EXPECT_EQ(a->Find("team")->targets, (std::vector<std::string>{"a@x.test", "b@y.test", "other"}));

  const std::pair<std::string, std::string> bad[] = {
      {"x: |/bin/sh\n", "aliases:1: program aliases are not supported"},
      {"x: /etc/passwd\n", "aliases:1: file aliases are not supported"},
      {"x: :include:/etc/list\n", "aliases:1: :include: lists are not supported"},
      {"x: y@z.test\nx: w@z.test\n", "aliases:2: duplicate alias 'x'"},
      {"a: b\nb: a\n", "alias loop"},
      {"a: nobody\n", "aliases:1: 'nobody' is neither an address nor an alias"},
      {"  orphan@x.test\n", "aliases:1: continuation line without an alias"},
      {"novalue\n", "aliases:1: missing ':'"},
      {"m: moved.REDIRECT\n", "aliases:1: redirect target needs a full address"},
  };
  for (const auto& [text, error] : bad) {
    auto r = AliasMap::Parse(text, "aliases");
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find(error), std::string::npos) << r.status().message();
  }
}

TEST(VirtuserTable, MostSpecificMatchWithSubstitution) {
  auto v = VirtuserTable::Parse(
      "info@v.test   team\n"
      "user+*@v.test %1.%2@lists.test\n"
      "@v.test       %1@catchall.test\n",
      "virtusertable");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->Lookup("INFO@v.test")->target, "team");
  EXPECT_EQ(v->Lookup("user+news@v.test")->target, "user.news@lists.test");
  EXPECT_EQ(v->Lookup("bob+x@v.test")->target, "bob@catchall.test");
  EXPECT_FALSE(v->Lookup("bob@other.test").has_value());
  EXPECT_TRUE(v->HasDomain("v.test"));

  auto bad = VirtuserTable::Parse("ok@v.test a@b.test\nnoat target\n", "vt");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("vt:2: key must be user@domain"), std::string::npos);
  bad = VirtuserTable::Parse("x@v.test a@b.test c@d.test\n", "vt");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("vt:1: one target per line"), std::string::npos);
}

TEST(AuthUsers, VerifiesCryptHashesAndRefusesPlainText) {
  // openssl passwd -6 -salt s3cr3tsalt pw
  auto u = AuthUsers::Parse(
      "# users\n"
      "carol:$6$s3cr3tsalt$tRUZlik0ISkPJbKWvx3E9wqdXOS216r28YQMzw6zV7RAHO5Rw0gualb//3u1Dc91m9UPIKWVbOnOY6nrPws/R.\n",
      "users");
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_TRUE(u->Verify("carol", "pw"));
  EXPECT_FALSE(u->Verify("carol", "pW"));
  EXPECT_FALSE(u->Verify("dave", "pw"));
  EXPECT_FALSE(u->Verify("carol", std::string("pw\0x", 4)));
  auto bad = AuthUsers::Parse("eve:plaintext\n", "users");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("users:1: password of 'eve' must be a crypt(3) hash"), std::string::npos);
}

TEST(ClassFile, OneDomainPerLine) {
  auto c = ParseClassFile("# local\nExample.COM\nmail.example.com # comment\n", "lhn");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, (std::vector<std::string>{"example.com", "mail.example.com"}));
  auto bad = ParseClassFile("a.test b.test\n", "lhn");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "lhn:1: one name per line");
}

TEST(Policy, BadHeaderRuleAndMissingFileAreReported) {
  IngressConfig c;
  c.hostname = "mx.test";
  c.header_checks = {{"Subject", "regex", "(unclosed", "550 5.7.1 no"}};
  auto p = Policy::Load(c, ".");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("ingress.header_checks[0].pattern"), std::string::npos);
  c.header_checks = {{"Subject", "exact", "x", "250 fine"}};
  p = Policy::Load(c, ".");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("ingress.header_checks[0].reply"), std::string::npos);
  c.header_checks.clear();
  c.access_map = "/nonexistent/access";
  p = Policy::Load(c, ".");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(), "ingress.access_map: /nonexistent/access: cannot read map file");
}

}  // namespace
}  // namespace mx::ingress

namespace mx::ingress {
namespace {

TEST(Policy, DnsblZonesInOrderWithPassAndBlockAnswers) {
  IngressConfig c;
  c.hostname = "mx.test";
  c.dnsbl = {{"wl.test", {}, {"127.0.0.0/8"}, ""},
             {"bl.test", {"127.0.0.2"}, {}, "554 5.7.1 [{client}] listed by {zone} ({answer})"}};
  c.dnsbl[0].reply = c.dnsbl[1].reply;
  auto p = Policy::Load(c, ".");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)->dnsbl_zones(), (std::vector<std::string>{"wl.test", "bl.test"}));
  ClientInfo client{"192.0.2.9", "unknown"};
  using K = DnsblAnswer::Kind;
  ClientFacts listed{"unknown", {{"wl.test", K::kNotListed, {}, ""}, {"bl.test", K::kListed, {"127.0.0.2"}, ""}}};
  Verdict v = (*p)->CheckDnsbl(client, listed);
  EXPECT_EQ(v.reply, "554 5.7.1 [192.0.2.9] listed by bl.test (127.0.0.2)");
  EXPECT_EQ(v.reason, RejectReason::kDnsbl);
  ClientFacts allowed{"unknown",
                      {{"wl.test", K::kListed, {"127.0.0.1"}, ""}, {"bl.test", K::kListed, {"127.0.0.2"}, ""}}};
  EXPECT_EQ((*p)->CheckDnsbl(client, allowed).kind, Verdict::Kind::kOk);
  ClientFacts other_code{"unknown", {{"wl.test", K::kNotListed, {}, ""}, {"bl.test", K::kListed, {"127.0.0.4"}, ""}}};
  EXPECT_EQ((*p)->CheckDnsbl(client, other_code).kind, Verdict::Kind::kNone);
  ClientFacts dns_down{"unknown", {{"wl.test", K::kTempFail, {}, "timeout"}, {"bl.test", K::kTempFail, {}, "timeout"}}};
  EXPECT_EQ((*p)->CheckDnsbl(client, dns_down).kind, Verdict::Kind::kNone);  // a temporary pass
}

}  // namespace
}  // namespace mx::ingress

namespace mx::ingress {
namespace {

// The shipped example (scripts/demo) must always load.
TEST(Policy, ShippedExampleLoads) {
  auto cfg = LoadConfig(test::DataPath("../../examples/mx-demo.yaml"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  auto p = Policy::Load(cfg->ingress, cfg->config_dir);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  RecipientVerdict v = (*p)->CheckRecipient("team@demo.test", false);
  EXPECT_EQ(v.addresses, (std::vector<std::string>{"alice@example.test", "bob@example.test"}));
  EXPECT_TRUE((*p)->CheckHeaders("Subject: fw: ILOVEYOU\r\n\r\n").rejected());
}

}  // namespace
}  // namespace mx::ingress
