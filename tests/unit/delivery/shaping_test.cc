// shaping_test.cc — sites by MX set, rules by MX suffix and by domain, the
// layering of the shipped defaults, the operator's file and destinations.
#include "mx/delivery/shaping.h"

#include <gtest/gtest.h>

namespace mx::delivery {
namespace {

Shaping MustParse(const DeliveryConfig& c, const std::vector<std::pair<std::string, std::string>>& layers) {
  auto s = Shaping::Parse(c, layers);
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? std::move(s).value() : Shaping{};
}

std::string ParseError(const std::string& text) {
  auto s = Shaping::Parse(DeliveryConfig{}, {{"shaping.yaml", text}});
  return s.ok() ? "" : s.status().message();
}

TEST(Shaping, DomainsWithTheSameMxSetShareOneSite) {
  auto s = MustParse(DeliveryConfig{}, {{"t", "default:\n  max_connections: 3\n"}});
  auto a = s.For("a.example", {"mx2.host.example.", "MX1.host.example"});
  auto b = s.For("b.example", {"mx1.host.example", "mx2.host.example"});
  EXPECT_EQ(a.site, "mx:mx1.host.example,mx2.host.example");  // sorted, lower case, no root dot
  EXPECT_EQ(a.key, b.key);
  EXPECT_EQ(a.key, "site:" + a.site);
  EXPECT_EQ(a.max_connections, 3u);
  EXPECT_FALSE(a.named);
  auto c = s.For("c.example", {"mx1.host.example"});  // a different set: another site
  EXPECT_NE(c.key, a.key);
  EXPECT_EQ(s.For("bare.example", {}).site, "mx:bare.example");
}

TEST(Shaping, SitesNamedByMxSuffixOrDomainAndTheirDefaults) {
  auto s = MustParse(DeliveryConfig{}, {{"t", R"(
default:
  max_messages_per_connection: 100
  max_message_rate: 50/s
sites:
  bigmail:
    mx: [.bigmail.example, exact-mx.example]
    max_connections: 2
    max_connection_rate: 10/min
    tls: required
  partner:
    domains: [partner.example]
    max_message_rate: 3000/h
)"}});
  auto g = s.For("customer.example", {"mx-in.l.bigmail.example"});
  EXPECT_TRUE(g.named);
  EXPECT_EQ(g.site, "bigmail");
  EXPECT_EQ(g.key, "site:bigmail");
  EXPECT_EQ(g.max_connections, 2u);
  EXPECT_EQ(g.max_messages_per_connection, 100u);  // from default
  EXPECT_EQ(g.message_rate.count, 50u);
  EXPECT_EQ(g.message_rate.period_s, 1u);
  EXPECT_EQ(g.connection_rate.ToString(), "10/min");
  EXPECT_EQ(g.tls, SiteTls::kRequired);
  EXPECT_EQ(s.For("x.example", {"other.example", "exact-mx.example"}).site, "bigmail");  // any host of the set
  EXPECT_NE(s.For("x.example", {"notbigmail.example"}).site, "bigmail");                 // a suffix is a whole label
  EXPECT_NE(s.For("x.example", {"bigmail.example"}).site, "bigmail");  // ".suffix" needs a host below it
  // A domain rule wins over the MX match, and covers subdomains.
  auto p = s.For("eu.partner.example", {"mx.bigmail.example"});
  EXPECT_EQ(p.site, "partner");
  EXPECT_EQ(p.message_rate.ToString(), "3000/h");
  EXPECT_EQ(p.max_connections, 0u);
  EXPECT_EQ(p.tls, SiteTls::kDefault);
}

TEST(Shaping, LaterLayersAmendSitesFieldByField) {
  DeliveryConfig c;
  c.destinations.push_back(DestinationLimits{{"Legacy.example", "legacy.net"}, 2, 10, 60});
  c.destination_defaults.max_connections = 7;
  auto s = MustParse(c, {{"base",
                          "sites:\n  p:\n    mx: [.p.example]\n    max_connections: 5\n"
                          "    max_messages_per_connection: 50\n"},
                         {"ops", "sites:\n  p:\n    max_connections: 20\n  q:\n    domains: [q.example]\n"}});
  auto p = s.For("d.example", {"mx.p.example"});
  EXPECT_EQ(p.max_connections, 20u);
  EXPECT_EQ(p.max_messages_per_connection, 50u);  // kept from the base layer
  EXPECT_EQ(s.For("q.example", {"mx.p.example"}).site, "q");
  auto l = s.For("mx.legacy.net", {"mx.p.example"});  // destinations: by domain, first
  EXPECT_EQ(l.site, "legacy.example");
  EXPECT_EQ(l.max_connections, 2u);
  EXPECT_EQ(l.message_rate.ToString(), "60/min");
  EXPECT_EQ(s.For("z.example", {"mx.z.example"}).max_connections, 7u);  // destination_defaults
}

TEST(Shaping, ShippedDefaultsParseAndNameTheBigProviders) {
  auto s = MustParse(DeliveryConfig{}, {{"built-in", std::string(Shaping::ShippedDefaults())}});
  EXPECT_EQ(s.For("gmail.com", {"gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"}).site, "google");
  EXPECT_EQ(s.For("customer.example", {"aspmx.l.google.com"}).site, "google");  // Workspace
  EXPECT_EQ(s.For("yahoo.com", {"mta5.am0.yahoodns.net"}).site, "yahoo");
  EXPECT_EQ(s.For("hotmail.com", {"hotmail-com.olc.protection.outlook.com"}).site, "outlook");
  EXPECT_EQ(s.For("tenant.example", {"tenant-example.mail.protection.outlook.com"}).site, "office365");
  EXPECT_EQ(s.For("icloud.com", {"mx01.mail.icloud.com"}).site, "apple");
  EXPECT_EQ(s.For("comcast.net", {"mx1a1.comcast.net"}).tls, SiteTls::kRequired);
  auto g = s.For("gmail.com", {"gmail-smtp-in.l.google.com"});
  EXPECT_GT(g.max_connections, 0u);
  EXPECT_GT(g.max_messages_per_connection, 0u);
  // Everyone else: unlimited, as before shaping existed.
  auto other = s.For("small.example", {"mail.small.example"});
  EXPECT_FALSE(other.named);
  EXPECT_EQ(other.max_connections, 0u);
  EXPECT_TRUE(other.message_rate.none());
}

TEST(Shaping, ReplyRulesOfTheSiteThenTheDefault) {
  auto s = MustParse(DeliveryConfig{}, {{"t", R"(
default:
  replies:
    - match: 'temporarily rate limited'
      action: slow
      max_connections: 1
      max_message_rate: 1/min
      duration: 90m
sites:
  yahooish:
    mx: [.yahoo.example]
    replies:
      - match: '\[TSS?04\]'
        action: suspend
        duration: 2h
)"}});
  auto y = s.For("y.example", {"mta5.yahoo.example"});
  const ReplyRule* r = y.MatchReply("421 4.7.0 [TS04] Messages from 192.0.2.1 temporarily deferred");
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(r->suspend);
  EXPECT_EQ(r->duration_s, 7200u);
  EXPECT_NE(y.MatchReply("421 4.7.0 [tss04] deferred"), nullptr);  // case-insensitive
  const ReplyRule* d = y.MatchReply("450 4.7.650 The mail server has been temporarily rate limited");
  ASSERT_NE(d, nullptr);  // the default's rules apply to every site, after its own
  EXPECT_FALSE(d->suspend);
  EXPECT_EQ(d->max_connections, 1u);
  EXPECT_EQ(d->message_rate.ToString(), "1/min");
  EXPECT_EQ(y.MatchReply("550 5.1.1 no such user"), nullptr);
  auto other = s.For("o.example", {"mx.o.example"});
  EXPECT_EQ(other.MatchReply("421 [TS04] x"), nullptr);  // another site's rule
  EXPECT_NE(other.MatchReply("temporarily rate limited"), nullptr);
  // The shipped rules: Yahoo's complaint deferral, Gmail's unusual rate.
  auto shipped = MustParse(DeliveryConfig{}, {{"built-in", std::string(Shaping::ShippedDefaults())}});
  auto yahoo = shipped.For("yahoo.com", {"mta6.am0.yahoodns.net"});
  ASSERT_NE(yahoo.MatchReply("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints"),
            nullptr);
  EXPECT_TRUE(yahoo.MatchReply("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred")->suspend);
  auto gmail = shipped.For("gmail.com", {"gmail-smtp-in.l.google.com"});
  ASSERT_NE(gmail.MatchReply("421-4.7.28 Gmail has detected an unusual rate of unsolicited mail"), nullptr);
  EXPECT_FALSE(gmail.MatchReply("421-4.7.28 unusual rate")->suspend);
}

TEST(Shaping, BadReplyRulesAreNamed) {
  EXPECT_EQ(ParseError("default:\n  replies:\n    - action: suspend\n      duration: 1h\n"),
            "shaping.yaml: default.replies[0].match: is required (a regular expression searched in the reply)");
  EXPECT_EQ(ParseError("default:\n  replies:\n    - match: 'x'\n      action: suspend\n"),
            "shaping.yaml: default.replies[0].duration: is required, from 1s to 30d");
  EXPECT_EQ(ParseError("default:\n  replies:\n    - match: 'x'\n      action: pause\n      duration: 1h\n"),
            "shaping.yaml: default.replies[0].action: expected suspend or slow, got 'pause'");
  EXPECT_EQ(ParseError("default:\n  replies:\n    - match: 'x'\n      action: slow\n      duration: 1h\n"),
            "shaping.yaml: default.replies[0]: action: slow needs max_connections or max_message_rate");
  EXPECT_EQ(ParseError("default:\n  replies:\n    - match: 'x'\n      duration: 1h\n      max_connections: 1\n"),
            "shaping.yaml: default.replies[0]: max_connections and max_message_rate belong to action: slow");
  EXPECT_TRUE(ParseError("default:\n  replies:\n    - match: '[unclosed'\n      duration: 1h\n")
                  .starts_with("shaping.yaml: default.replies[0].match: not a regular expression"));
}

TEST(Shaping, RatesParse) {
  EXPECT_EQ(ParseRate("10/s")->period_s, 1u);
  EXPECT_EQ(ParseRate("100/min")->period_s, 60u);
  EXPECT_EQ(ParseRate("3000/h")->period_s, 3600u);
  EXPECT_EQ(ParseRate("5/90s")->period_s, 90u);
  EXPECT_EQ(ParseRate("5/90s")->ToString(), "5/90s");
  EXPECT_EQ(ParseRate("2/d")->ToString(), "2/d");
  EXPECT_TRUE(ParseRate("none")->none());
  EXPECT_TRUE(ParseRate("0")->none());
  for (const char* bad : {"10", "/s", "0/s", "-1/s", "10/fortnight", "10/0s", "x/min", "10/s/s", "1/100000d"}) {
    EXPECT_FALSE(ParseRate(bad).ok()) << bad;
  }
}

TEST(Shaping, MistakesAreNamed) {
  EXPECT_EQ(ParseError("sites:\n  p:\n    max_connections: 2\n"),
            "shaping.yaml: sites.p: needs mx (host suffixes) or domains");
  EXPECT_EQ(ParseError("sites:\n  p:\n    mx: [.p.example]\n    max_conections: 2\n"),
            "shaping.yaml: sites.p.max_conections: unknown key");
  EXPECT_EQ(ParseError("default:\n  max_message_rate: 10/fortnight\n"),
            "shaping.yaml: default.max_message_rate: expected a rate like 10/s, 100/min, 3000/h or 1/5s, got "
            "'10/fortnight'");
  EXPECT_EQ(ParseError("sites:\n  p:\n    mx: [.p.example]\n    tls: always\n"),
            "shaping.yaml: sites.p.tls: expected default, none, may or required, got 'always'");
  EXPECT_EQ(ParseError("sites:\n  p:\n    mx: ['bad host']\n"), "shaping.yaml: sites.p: bad host or domain 'bad host'");
  EXPECT_EQ(ParseError("sites:\n  mx:p:\n    mx: [.p.example]\n"),
            "shaping.yaml: sites.mx:p: bad site name (no spaces, '|' or ',', and not starting with mx:)");
  EXPECT_EQ(ParseError("sites: [1, 2]\n"),
            "shaping.yaml: sites: expected a mapping of site name: {mx, domains, "
            "limits...}");
  EXPECT_EQ(ParseError("default:\n  max_connections: -1\n"),
            "shaping.yaml: default.max_connections: expected a non-negative integer, got '-1'");
  EXPECT_EQ(ParseError("bogus: 1\n"), "shaping.yaml: bogus: unknown key");
}

}  // namespace
}  // namespace mx::delivery
