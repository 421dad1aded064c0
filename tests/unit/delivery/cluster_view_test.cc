// cluster_view_test.cc — the worker's view of the cluster (host status of
// every shard, suspended and slowed sites, its own triggers, suppressions)
// against a fake queue and metadata shard; the memory of broken STARTTLS;
// egress pools.
#include "cluster_view.h"

#include <gtest/gtest.h>

#include <set>

#include "egress.h"
#include "fakes.h"
#include "tls_memory.h"

namespace mx::delivery {
namespace {

using namespace std::chrono_literals;
using testing::FakeMetadata;
using testing::FakeQueue;

v1::HostStatus Failed(const std::string& host, int64_t at_us) {
  v1::HostStatus h;
  h.set_host(host);
  h.set_consecutive_failures(1);
  h.set_last_attempt_unix_us(at_us);
  h.set_last_reply("421 busy");
  return h;
}

class ClusterViewTest : public ::testing::Test {
 protected:
  bool Skips(const std::string& host) {
    return view_.hosts().SkipReason(host, clock_.NowUnixMicros(), 1'800'000'000).has_value();
  }
  FakeClock clock_;
  FakeQueue queue_{2};
  FakeMetadata meta_;
  InFlightCalls calls_;
  ClusterView view_{queue_, meta_, calls_, clock_, "w1"};
};

TEST_F(ClusterViewTest, HostStatusOfEveryShardIsMergedAndAShardDownKeepsTheOldView) {
  *queue_.hosts[0].add_hosts() = Failed("a.example", clock_.NowUnixMicros());
  *queue_.hosts[1].add_hosts() = Failed("b.example", clock_.NowUnixMicros());
  view_.Refresh(true);
  EXPECT_TRUE(Skips("a.example"));
  EXPECT_TRUE(Skips("b.example"));
  queue_.hosts[0].clear_hosts();
  queue_.failing[1] = true;
  view_.Refresh(true);
  EXPECT_TRUE(Skips("a.example"));  // not forgotten for a shard that did not answer
  queue_.failing[1] = false;
  queue_.hosts[1].clear_hosts();
  clock_.Advance(1s);  // a refresh after the attempt: purged where no shard knows it
  view_.Refresh(true);
  EXPECT_FALSE(Skips("a.example"));
  const size_t lists = queue_.host_lists;
  view_.Refresh(false);  // host status off: the shards are not asked
  EXPECT_EQ(queue_.host_lists, lists);
}

// A retired (or still creating) shard is not asked: the view stays complete
// and is refreshed from the shards that hold mail.
TEST_F(ClusterViewTest, ARetiredShardIsNotAskedAndDoesNotHoldTheViewBack) {
  *queue_.hosts[0].add_hosts() = Failed("a.example", clock_.NowUnixMicros());
  queue_.retired.insert(1);  // would answer "down" if asked
  view_.Refresh(true);
  EXPECT_TRUE(Skips("a.example"));
  EXPECT_EQ(queue_.host_lists, 1u);
  queue_.hosts[0].clear_hosts();
  clock_.Advance(1s);
  view_.Refresh(true);  // complete without shard 1: a.example is purged
  EXPECT_FALSE(Skips("a.example"));
}

TEST_F(ClusterViewTest, SitesComeFromTheMetadataShardUntilTheyExpire) {
  auto* st = meta_.sites.add_sites();
  st->set_site("yahoo");
  st->set_suspended(true);
  st->set_until_unix_us(clock_.NowUnixMicros() + 60'000'000);
  view_.Refresh(false);
  ASSERT_TRUE(view_.Site("yahoo"));
  EXPECT_TRUE(view_.Site("yahoo")->suspended());
  clock_.Advance(61s);
  EXPECT_FALSE(view_.Site("yahoo"));
}

TEST_F(ClusterViewTest, ATriggerHoldsHereAtOnceIsStoredOnceAndSurvivesARefreshThatPredatesIt) {
  SiteShape shape;
  shape.site = "example";
  shape.named = true;
  ReplyRule rule;
  rule.match = "blocked";
  rule.suspend = true;
  rule.duration_s = 600;
  view_.TriggerSite(shape, rule, "554 5.7.1 blocked\r\n", "Q1");
  ASSERT_TRUE(view_.Site("example"));
  EXPECT_EQ(view_.Site("example")->reason(), "554 5.7.1 blocked  ");
  view_.TriggerSite(shape, rule, "554 5.7.1 blocked", "Q2");  // already suspended: one trigger per episode
  {
    std::lock_guard lock(meta_.mu);
    ASSERT_EQ(meta_.site_sets.size(), 1u);
    EXPECT_EQ(meta_.site_sets[0].by(), "reply rule /blocked/ on w1");
  }
  view_.Refresh(false);  // the metadata shard does not have it yet
  EXPECT_TRUE(view_.Site("example"));
  clock_.Advance(1s);
  view_.Refresh(false);  // a later refresh is the metadata shard's word
  EXPECT_FALSE(view_.Site("example"));
  EXPECT_TRUE(calls_.WaitIdle(1s));
}

TEST_F(ClusterViewTest, SuppressionsAreSentAndAnEmptyListIsNot) {
  view_.Suppress(v1::SuppressRequest());
  v1::SuppressRequest req;
  req.add_add()->set_address("gone@example.net");
  view_.Suppress(req);
  std::lock_guard lock(meta_.mu);
  ASSERT_EQ(meta_.suppressions.size(), 1u);
  EXPECT_EQ(meta_.suppressions[0].add(0).address(), "gone@example.net");
}

TEST(TlsFailureMemoryTest, ABrokenAddressIsRememberedForItsTtl) {
  FakeClock clock;
  TlsFailureMemory memory(clock, 3600s);
  EXPECT_FALSE(memory.Broken("127.0.0.2"));
  memory.Remember("127.0.0.2");
  EXPECT_TRUE(memory.Broken("127.0.0.2"));
  EXPECT_FALSE(memory.Broken("127.0.0.3"));
  clock.Advance(3600s);
  EXPECT_FALSE(memory.Broken("127.0.0.2"));
  TlsFailureMemory off(clock, 0s);
  off.Remember("127.0.0.2");
  EXPECT_FALSE(off.Broken("127.0.0.2"));
}

TEST(EgressSourcesTest, ASendersPoolPicksByWeightAndOthersUseTheDefault) {
  DeliveryConfig c;
  EXPECT_EQ(EgressSources(c).Pick("a@b.test"), nullptr);
  c.sources = {EgressSource{"a", "127.0.0.10", "", ""}, EgressSource{"b", "127.0.0.11", "", "100/h"},
               EgressSource{"c", "127.0.0.12", "", ""}};
  c.pools = {EgressPool{"news", {{"b", 1}, {"c", 3}}, {"news.example"}}};
  EgressSources egress(c);
  std::set<std::string> news, other;
  for (int i = 0; i < 200; ++i) {
    news.insert(egress.Pick("x@list.news.example")->name);
    other.insert(egress.Pick("x@mail.example")->name);
  }
  EXPECT_EQ(news, (std::set<std::string>{"b", "c"}));
  EXPECT_EQ(other, (std::set<std::string>{"a", "b", "c"}));  // the implicit default: every source
  for (int i = 0; i < 10; ++i) {
    const auto* b = egress.Pick("x@news.example");
    if (b->name == "b") {
      EXPECT_EQ(b->rate.count, 100u);
    }
  }
}

}  // namespace
}  // namespace mx::delivery
