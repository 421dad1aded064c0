// routing_test.cc — mailertable parsing and lookups, mailers (M=), and
// per-destination limits.
#include "mx/delivery/routing.h"

#include <gtest/gtest.h>

namespace mx::delivery {
namespace {

Routing MustParse(const DeliveryConfig& c, std::string_view table) {
  auto r = Routing::Parse(c, table, "mailertable");
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? std::move(r).value() : Routing{};
}

std::string ParseError(const DeliveryConfig& c, std::string_view table) {
  auto r = Routing::Parse(c, table, "mailertable");
  return r.ok() ? "" : r.status().message();
}

TEST(Routing, MailertableExactParentAndCatchAll) {
  DeliveryConfig c;
  auto r = MustParse(c,
                     "# comment\n"
                     "corp.example      lmtp:[127.0.0.1]:2424\n"
                     ".corp.example     esmtp:[10.0.0.2]\n"
                     "Relay.Example     relay:smarthost.example:2525\n"
                     "gone.example      error:5.1.2:550 Host unknown\n"
                     "old.example       error:551 5.1.6 moved\n");
  auto lmtp = r.RouteFor("CORP.example");
  ASSERT_TRUE(lmtp.relay);
  EXPECT_EQ(lmtp.mailer->name, "lmtp");
  EXPECT_TRUE(lmtp.mailer->lmtp);
  EXPECT_EQ(lmtp.relay->host, "127.0.0.1");
  EXPECT_EQ(lmtp.relay->port, 2424);
  EXPECT_TRUE(lmtp.relay->literal);

  auto sub = r.RouteFor("a.b.corp.example");  // ".corp.example" covers subdomains
  ASSERT_TRUE(sub.relay);
  EXPECT_EQ(sub.mailer->name, "esmtp");
  EXPECT_EQ(sub.relay->host, "10.0.0.2");
  EXPECT_EQ(sub.relay->port, 25);

  auto relay = r.RouteFor("relay.example");
  ASSERT_TRUE(relay.relay);
  EXPECT_FALSE(relay.relay->literal);  // no brackets: the host's MX records are used
  EXPECT_EQ(relay.relay->port, 2525);

  EXPECT_EQ(r.RouteFor("gone.example").error, "550 5.1.2 Host unknown");
  EXPECT_EQ(r.RouteFor("old.example").error, "551 5.1.6 moved");

  auto mx = r.RouteFor("elsewhere.example");  // no entry, no smart host: MX
  EXPECT_FALSE(mx.relay);
  EXPECT_EQ(mx.mailer->name, "esmtp");
  EXPECT_TRUE(mx.error.empty());

  auto catchall = MustParse(c, ".  relay:[192.0.2.9]\n");
  ASSERT_TRUE(catchall.RouteFor("any.example").relay);
  EXPECT_EQ(catchall.RouteFor("any.example").relay->host, "192.0.2.9");
}

TEST(Routing, SmartHostUsesTheRelayMailerAfterTheMailertable) {
  DeliveryConfig c;
  c.smart_host = "[127.0.0.1]:2525";
  auto r = MustParse(c, "corp.example  lmtp:[127.0.0.1]\n");
  EXPECT_EQ(r.RouteFor("corp.example").mailer->name, "lmtp");
  EXPECT_EQ(r.RouteFor("corp.example").relay->port, 24);  // LMTP's port by default
  auto smart = r.RouteFor("other.example");
  ASSERT_TRUE(smart.relay);
  EXPECT_EQ(smart.mailer->name, "relay");
  EXPECT_EQ(smart.relay->port, 2525);
}

TEST(Routing, ConfiguredMailersCarryTheirSizeLimit) {
  DeliveryConfig c;
  c.mailers.push_back(MailerConfig{"small", "smtp", 1000});
  c.mailers.push_back(MailerConfig{"lmtp", "lmtp", 5000});
  auto r = MustParse(c, "a.example small:[127.0.0.1]\nb.example lmtp:127.0.0.1:24\n");
  EXPECT_EQ(r.RouteFor("a.example").mailer->max_message_size, 1000u);
  EXPECT_FALSE(r.RouteFor("a.example").mailer->lmtp);
  EXPECT_EQ(r.RouteFor("b.example").mailer->max_message_size, 5000u);
  EXPECT_EQ(r.RouteFor("c.example").mailer->max_message_size, 0u);
}

TEST(Routing, BadEntriesNameFileAndLine) {
  DeliveryConfig c;
  EXPECT_EQ(ParseError(c, "\nexample.com\n"), "mailertable:2: missing mailer:host for 'example.com'");
  EXPECT_EQ(ParseError(c, "example.com  [127.0.0.1]\n"), "mailertable:1: expected mailer:host, got '[127.0.0.1]'");
  EXPECT_EQ(ParseError(c, "example.com  uucp:host\n"),
            "mailertable:1: unknown mailer 'uucp' (esmtp, smtp, relay, lmtp, error or delivery.mailers)");
  EXPECT_EQ(ParseError(c, "a.example esmtp:x\nA.example esmtp:y\n"),
            "mailertable:2: duplicate key 'a.example' (first at line 1)");
  EXPECT_EQ(ParseError(c, "bad..example esmtp:x\n"), "mailertable:1: bad domain 'bad..example'");
  EXPECT_EQ(ParseError(c, "a.example esmtp:\n"), "mailertable:1: missing host after 'esmtp:'");
  EXPECT_EQ(ParseError(c, "a.example esmtp:[127.0.0.1]:0\n"), "mailertable:1: bad port in '[127.0.0.1]:0'");
  EXPECT_EQ(ParseError(c, "a.example error:250 fine\n"),
            "mailertable:1: error: entries need a 4xx or 5xx reply, e.g. error:5.1.2:550 No such domain");
  EXPECT_EQ(ParseError(c, "a.example error:4.1.2:550 mixed\n"),
            "mailertable:1: enhanced status 4.1.2 does not match reply 550");
}

}  // namespace
}  // namespace mx::delivery
