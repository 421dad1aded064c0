// domain_delivery_test.cc — the per-domain delivery steps against a fake
// resolver, fake SMTP servers and a fake metadata shard: MX order and
// moving on, fallback_mx_host, permanent and temporary DNS answers, the
// secondary-MX cut, host-status skips, opportunistic TLS retried in the
// clear and remembered, DANE, mailertable errors and M=, egress sources,
// suspended sites and reply rules.
#include "domain_delivery.h"

#include <gtest/gtest.h>

#include "fakes.h"

namespace mx::delivery {
namespace {

using namespace std::chrono_literals;
using testing::Await;
using testing::FakeMetadata;
using testing::FakeNet;
using testing::FakeQueue;
using testing::FakeResolver;
using testing::Mx;
namespace asio = boost::asio;

class DomainDeliveryTest : public ::testing::Test {
 protected:
  DomainDeliveryTest() {
    config_.shaping_defaults = false;
    config_.helo_name = "mx.self.test";
    config_.tls_failure_memory = 3600s;
    msg_.mutable_envelope()->set_qid("Q1");
    msg_.mutable_envelope()->set_sender("s@sender.test");
    msg_.set_body("Subject: t\r\n\r\nhi\r\n");
  }

  // Builds the parts from config_ (call after changing it).
  // With config_dir_ set, the routing (and config_.shaping_file) is read from there.
  void Build(std::string_view mailertable = "") {
    auto r =
        config_dir_.empty() ? Routing::Parse(config_, mailertable, "mailertable") : Routing::Load(config_, config_dir_);
    ASSERT_TRUE(r.ok()) << r.status().message();
    routing_ = std::make_unique<Routing>(std::move(r).value());
    egress_ = std::make_unique<EgressSources>(config_);
    ConnectionPool::Options o;
    o.worker_id = "w";
    o.cache_size = 0;
    pool_ = std::make_unique<ConnectionPool>(io_, permits_, o, net_.Opener());
    TlsProfiles profiles = TlsProfiles::From(config_);
    if (dane_) profiles.EnableDane(profiles.encrypt.tls_context);
    dd_ = std::make_unique<DomainDelivery>(
        config_, "mx.self.test", std::move(profiles),
        DomainDelivery::Parts{resolver_, *routing_, cluster_, *pool_, tls_memory_, nullptr, *egress_, clock_});
  }

  DomainResult Deliver(const std::string& domain, size_t n = 1) {
    rcpts_.clear();
    for (size_t i = 0; i < n; ++i) rcpts_.push_back(ClientRcpt{"r" + std::to_string(i) + "@" + domain, 0, ""});
    route_ = routing_->RouteFor(domain);
    return Await(io_, dd_->Deliver(domain, route_, msg_, rcpts_));
  }

  std::vector<std::string> Opened() const {
    std::vector<std::string> ips;
    for (const auto& o : net_.opens) ips.push_back(o.ip);
    return ips;
  }

  FakeClock clock_;
  DeliveryConfig config_;
  FakeResolver resolver_;
  FakeMetadata meta_;
  FakeQueue queue_;
  InFlightCalls calls_;
  PermitClient permits_{meta_, calls_};
  ClusterView cluster_{queue_, meta_, calls_, clock_, "w"};
  TlsFailureMemory tls_memory_{clock_, 3600s};
  asio::io_context io_;
  FakeNet net_;
  bool dane_ = false;
  std::string config_dir_;
  std::unique_ptr<Routing> routing_;
  std::unique_ptr<EgressSources> egress_;
  std::unique_ptr<ConnectionPool> pool_;
  std::unique_ptr<DomainDelivery> dd_;
  v1::LeasedMessage msg_;
  Route route_;
  std::vector<ClientRcpt> rcpts_;
};

TEST_F(DomainDeliveryTest, HostsAreTriedInOrderAndARefusedOneMovesOnAtOnce) {
  resolver_.mx["example.net"] =
      Mx({{"mx1.example.net", 10, {"127.0.0.2", "127.0.0.3"}}, {"mx2.example.net", 20, {"127.0.0.4"}}});
  net_.servers["127.0.0.2"].open_error = "connection refused";
  net_.servers["127.0.0.3"].open_error = "connection refused";
  Build();
  auto res = Deliver("example.net", 2);
  EXPECT_EQ(Opened(), (std::vector<std::string>{"127.0.0.2", "127.0.0.3", "127.0.0.4"}));
  ASSERT_EQ(res.outcomes.size(), 2u);
  for (const auto& o : res.outcomes) {
    EXPECT_EQ(o.r.outcome, v1::OUTCOME_DELIVERED);
    EXPECT_EQ(o.relay, "mx2.example.net. [127.0.0.4]");
  }
  // mx1 failed (every address): reported and remembered; mx2 reported as good.
  ASSERT_EQ(res.hosts.size(), 2u);
  EXPECT_EQ(res.hosts[0].host(), "mx1.example.net");
  EXPECT_FALSE(res.hosts[0].ok());
  EXPECT_EQ(res.hosts[1].host(), "mx2.example.net");
  EXPECT_TRUE(res.hosts[1].ok());
  EXPECT_TRUE(cluster_.hosts().SkipReason("mx1.example.net", clock_.NowUnixMicros(), 1'000'000'000));
}

TEST_F(DomainDeliveryTest, AHostThatFailedRecentlyIsSkippedWithoutAConnection) {
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}, {"mx2.example.net", 20, {"127.0.0.4"}}});
  cluster_.hosts().Record("mx1.example.net", false, "421 4.3.2 busy", clock_.NowUnixMicros());
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(Opened(), (std::vector<std::string>{"127.0.0.4"}));
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DELIVERED);
}

TEST_F(DomainDeliveryTest, EveryHostFailingDefersWithTheLastErrorUnlessTheFallbackTakesIt) {
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}});
  net_.servers["127.0.0.2"].open_error = "421 4.3.2 go away";
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DEFERRED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "4.4.1");
  EXPECT_EQ(res.outcomes[0].r.reply, "421 4.3.2 go away with mx1.example.net. [127.0.0.2]");

  config_.fallback_mx_host = "[127.0.0.9]:2525";
  config_.host_status_timeout = 0s;  // mx1 is tried again
  resolver_.hosts["127.0.0.9"] = Mx({{"127.0.0.9", 0, {"127.0.0.9"}}});
  Build();
  res = Deliver("example.net");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DELIVERED);
  EXPECT_EQ(res.outcomes[0].relay, "[127.0.0.9] [127.0.0.9]");
  EXPECT_EQ(Opened().back(), "127.0.0.9");
}

TEST_F(DomainDeliveryTest, DnsAnswersThatBounceAndOneThatDefers) {
  MxAnswer nx;
  nx.kind = MxAnswer::Kind::kNoSuchDomain;
  nx.error = "Host unknown (Name server: nx.test: host not found)";
  resolver_.mx["nx.test"] = nx;
  MxAnswer null_mx;
  null_mx.kind = MxAnswer::Kind::kNullMx;
  null_mx.error = "null.test does not accept mail (null MX)";
  resolver_.mx["null.test"] = null_mx;
  Build();
  auto res = Deliver("nx.test");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_BOUNCED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "5.1.2");
  res = Deliver("null.test");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_BOUNCED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "5.1.10");
  res = Deliver("servfail.test");  // the fake's temporary failure: never a bounce
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DEFERRED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "4.4.3");
  EXPECT_TRUE(net_.opens.empty());
}

TEST_F(DomainDeliveryTest, AsSecondaryMxOnlyBetterHostsAreTriedAndBeingTheBestBounces) {
  config_.mx_self_names = {"backup.self.test"};
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}},
                                    {"backup.self.test.", 20, {"127.0.0.5"}},
                                    {"mx3.example.net", 30, {"127.0.0.6"}}});
  net_.servers["127.0.0.2"].open_error = "connection refused";
  resolver_.mx["loop.test"] = Mx({{"mx.self.test", 10, {"127.0.0.1"}}, {"mx9.loop.test", 20, {"127.0.0.7"}}});
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(Opened(), (std::vector<std::string>{"127.0.0.2"}));  // neither we nor worse hosts
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DEFERRED);
  res = Deliver("loop.test");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_BOUNCED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "5.4.6");
}

TEST_F(DomainDeliveryTest, FailedOpportunisticTlsIsRetriedInTheClearAndRemembered) {
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}});
  net_.servers["127.0.0.2"].tls_breaks = true;
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DELIVERED);
  ASSERT_EQ(net_.opens.size(), 2u);
  EXPECT_EQ(net_.opens[0].tls, SmtpClientConfig::Tls::kMay);
  EXPECT_EQ(net_.opens[1].tls, SmtpClientConfig::Tls::kNone);
  res = Deliver("example.net");  // remembered: plaintext at once
  ASSERT_EQ(net_.opens.size(), 3u);
  EXPECT_EQ(net_.opens[2].tls, SmtpClientConfig::Tls::kNone);
  clock_.Advance(3601s);  // forgotten: STARTTLS again
  Deliver("example.net");
  EXPECT_EQ(net_.opens[3].tls, SmtpClientConfig::Tls::kMay);
}

TEST_F(DomainDeliveryTest, RequiredTlsIsNeverRetriedInTheClear) {
  config_.tls_encrypt_domains = {"Example.NET"};
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}});
  net_.servers["127.0.0.2"].tls_breaks = true;
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DEFERRED);
  ASSERT_EQ(net_.opens.size(), 1u);
  EXPECT_EQ(net_.opens[0].tls, SmtpClientConfig::Tls::kEncrypt);
}

TEST_F(DomainDeliveryTest, DaneHostsOfASecureAnswerGetTheirTlsaRecordsChecked) {
  dane_ = true;
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}, {"mx2.example.net", 20, {"127.0.0.3"}}},
                                   /*secure=*/true);
  TlsaAnswer tlsa;
  tlsa.kind = TlsaAnswer::Kind::kOk;
  tlsa.secure = true;
  tlsa.records = {Tlsa{3, 1, 1, std::string(32, 'x')}, Tlsa{1, 0, 0, "pkix-ta: not usable"}};
  resolver_.tlsa["mx1.example.net"] = tlsa;
  TlsaAnswer failed;
  failed.kind = TlsaAnswer::Kind::kTempFail;
  failed.error = "SERVFAIL";
  resolver_.tlsa["mx2.example.net"] = failed;
  net_.servers["127.0.0.2"].open_error = "TLS certificate does not match";
  Build();
  auto res = Deliver("example.net");
  ASSERT_EQ(net_.opens.size(), 1u);  // mx2's TLSA could not be had: not sent there at all
  EXPECT_EQ(net_.opens[0].tls, SmtpClientConfig::Tls::kEncrypt);
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DEFERRED);
  EXPECT_EQ(res.outcomes[0].r.reply, "4.7.5 DANE: TLSA lookup failed (SERVFAIL)");
}

TEST_F(DomainDeliveryTest, MailertableErrorsAndTheMailersSizeBounceWithoutDns) {
  config_.mailers.push_back(MailerConfig{"small", "smtp", 10});
  Build("gone.test error:5.1.2:550 Host unknown\nsmall.test small:[127.0.0.8]\n");
  auto res = Deliver("gone.test");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_BOUNCED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "5.1.2");
  res = Deliver("small.test");
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_BOUNCED);
  EXPECT_EQ(res.outcomes[0].r.dsn_status, "5.3.4");
  EXPECT_TRUE(resolver_.asked.empty());
}

TEST_F(DomainDeliveryTest, TheEgressSourceBindsTheSessionAndNamesTheResult) {
  config_.sources = {EgressSource{"ip1", "127.0.0.50", "out1.self.test", ""}};
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}});
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(res.source, "ip1");
  ASSERT_EQ(net_.opens.size(), 1u);
  EXPECT_EQ(net_.opens[0].source, "127.0.0.50");
}

TEST_F(DomainDeliveryTest, ASuspendedSiteIsPutBackUntilItsSuspensionEnds) {
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}});
  Build();
  v1::SiteStatus st;
  st.set_site("mx:mx1.example.net");
  st.set_suspended(true);
  st.set_since_unix_us(clock_.NowUnixMicros());
  st.set_until_unix_us(clock_.NowUnixMicros() + 600'000'000);
  st.set_by("mxctl");
  st.set_reason("blocked");
  *meta_.sites.add_sites() = st;
  cluster_.Refresh(false);
  auto res = Deliver("example.net");
  EXPECT_TRUE(net_.opens.empty());
  EXPECT_TRUE(res.outcomes[0].throttled);
  EXPECT_EQ(res.outcomes[0].r.outcome, v1::OUTCOME_DEFERRED);
  EXPECT_GE(res.outcomes[0].not_before, st.until_unix_us());
}

TEST_F(DomainDeliveryTest, AReplyRuleThatSuspendsTheSiteStopsAtTheFirstHost) {
  const char* yaml =
      "sites:\n"
      "  example:\n"
      "    mx: [.example.net]\n"
      "    replies:\n"
      "      - match: 'too many connections from your IP'\n"
      "        action: suspend\n"
      "        duration: 10m\n";
  config_dir_ = ::testing::TempDir();
  {
    FILE* f = fopen((config_dir_ + "/shaping.yaml").c_str(), "w");
    ASSERT_TRUE(f);
    fputs(yaml, f);
    fclose(f);
  }
  config_.shaping_file = "shaping.yaml";
  resolver_.mx["example.net"] = Mx({{"mx1.example.net", 10, {"127.0.0.2"}}, {"mx2.example.net", 20, {"127.0.0.3"}}});
  net_.servers["127.0.0.2"].open_error = "421 4.7.0 too many connections from your IP";
  Build();
  auto res = Deliver("example.net");
  EXPECT_EQ(Opened(), (std::vector<std::string>{"127.0.0.2"}));
  EXPECT_TRUE(res.outcomes[0].throttled);
  EXPECT_EQ(res.site, "example");
  std::lock_guard lock(meta_.mu);
  ASSERT_EQ(meta_.site_sets.size(), 1u);
  EXPECT_TRUE(meta_.site_sets[0].suspended());
  EXPECT_EQ(meta_.site_sets[0].site(), "example");
}

}  // namespace
}  // namespace mx::delivery
