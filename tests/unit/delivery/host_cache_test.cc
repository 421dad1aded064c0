// host_cache_test.cc — skipping hosts that failed recently, with an injected
// time; reporting only changes; merging the shards' views.
#include "host_cache.h"

#include <gtest/gtest.h>

namespace mx::delivery {
namespace {

constexpr int64_t kSec = 1'000'000;
constexpr int64_t kTimeout = kSec * 30 * 60;  // Timeout.hoststatus 30m

v1::HostStatus Status(const std::string& host, int64_t at, uint32_t failures, const std::string& reply) {
  v1::HostStatus h;
  h.set_host(host);
  h.set_last_attempt_unix_us(at);
  h.set_consecutive_failures(failures);
  h.set_last_reply(reply);
  return h;
}

TEST(HostCache, AFailedHostIsSkippedUntilTheTimeoutPasses) {
  HostCache c;
  EXPECT_FALSE(c.SkipReason("mx.example", 0, kTimeout));
  c.Record("mx.example", false, "421 busy", 100 * kSec);
  EXPECT_EQ(c.SkipReason("mx.example", 100 * kSec + kTimeout - 1, kTimeout), "421 busy");
  EXPECT_FALSE(c.SkipReason("mx.example", 100 * kSec + kTimeout, kTimeout));  // expired: try again
  EXPECT_FALSE(c.SkipReason("mx.example", 101 * kSec, 0));                    // host status off
  c.Record("mx.example", true, "250 ok", 200 * kSec);
  EXPECT_FALSE(c.SkipReason("mx.example", 201 * kSec, kTimeout));  // a success clears it
}

TEST(HostCache, SuccessesAreReportedOnlyWhenTheyChangeSomething) {
  HostCache c;
  EXPECT_TRUE(c.ShouldReport("mx", true, 0));  // unknown host
  c.Record("mx", true, "250 ok", 0);
  EXPECT_FALSE(c.ShouldReport("mx", true, 30 * kSec));
  EXPECT_TRUE(c.ShouldReport("mx", true, 61 * kSec));  // refreshed once a minute
  EXPECT_TRUE(c.ShouldReport("mx", false, 1 * kSec));  // failures always
  c.Record("mx", false, "421", 2 * kSec);
  EXPECT_TRUE(c.ShouldReport("mx", true, 3 * kSec));  // recovery
}

TEST(HostCache, MergeTakesTheNewestPerHostAndKeepsOwnNewerAttempts) {
  HostCache c;
  c.Record("purged", false, "old", 10 * kSec);
  c.Record("mine", false, "421 mine", 50 * kSec);  // made after the refresh began
  size_t n = c.Merge({Status("a", 20 * kSec, 1, "shard0"), Status("a", 30 * kSec, 2, "shard1"),
                      Status("mine", 40 * kSec, 0, "250 ok")},
                     45 * kSec);
  EXPECT_EQ(n, 2u);  // "purged" is gone: no shard knows it
  EXPECT_EQ(c.SkipReason("a", 31 * kSec, kTimeout), "shard1");
  EXPECT_FALSE(c.SkipReason("purged", 11 * kSec, kTimeout));
  EXPECT_EQ(c.SkipReason("mine", 51 * kSec, kTimeout), "421 mine");
}

}  // namespace
}  // namespace mx::delivery
