// auth_throttle_test.cc — failed AUTH counting: per address and per user,
// in a window that ends, forgotten for a user who proves the password, and
// bounded in memory under a flood of distinct keys.
#include "auth_throttle.h"

#include <gtest/gtest.h>

namespace mx::ingress {
namespace {

using Verdict = AuthThrottle::Verdict;
constexpr int64_t kSecond = 1'000'000;

TEST(AuthThrottleTest, AnAddressIsBlockedAfterItsFailuresUntilTheWindowEnds) {
  AuthThrottle t;
  const AuthThrottle::Limits limits{3, 0, std::chrono::seconds(60)};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(t.Check("192.0.2.1", "user" + std::to_string(i), limits, i * kSecond), Verdict::kOk);
    t.Failed("192.0.2.1", "user" + std::to_string(i), limits, i * kSecond);
  }
  // Any user name from that address now, not from another address.
  EXPECT_EQ(t.Check("192.0.2.1", "someone-else", limits, 10 * kSecond), Verdict::kIpBlocked);
  EXPECT_EQ(t.Check("192.0.2.2", "user0", limits, 10 * kSecond), Verdict::kOk);
  // The window started at the first failure; after it the address may try again.
  EXPECT_EQ(t.Check("192.0.2.1", "user0", limits, 59 * kSecond), Verdict::kIpBlocked);
  EXPECT_EQ(t.Check("192.0.2.1", "user0", limits, 60 * kSecond), Verdict::kOk);
  t.Failed("192.0.2.1", "user0", limits, 60 * kSecond);  // a new window, one failure
  EXPECT_EQ(t.Check("192.0.2.1", "user0", limits, 61 * kSecond), Verdict::kOk);
}

TEST(AuthThrottleTest, AUserIsBlockedFromEveryAddressAndASuccessForgetsIt) {
  AuthThrottle t;
  const AuthThrottle::Limits limits{0, 2, std::chrono::seconds(600)};
  t.Failed("192.0.2.1", "alice", limits, 0);
  t.Failed("198.51.100.7", "alice", limits, kSecond);
  EXPECT_EQ(t.Check("203.0.113.9", "alice", limits, 2 * kSecond), Verdict::kUserBlocked);
  EXPECT_EQ(t.Check("203.0.113.9", "bob", limits, 2 * kSecond), Verdict::kOk);
  EXPECT_EQ(t.Check("203.0.113.9", "Alice", limits, 2 * kSecond), Verdict::kOk);  // names are exact
  t.Succeeded("alice");
  EXPECT_EQ(t.Check("203.0.113.9", "alice", limits, 3 * kSecond), Verdict::kOk);
}

TEST(AuthThrottleTest, ZeroLimitsCountNothing) {
  AuthThrottle t;
  const AuthThrottle::Limits limits{0, 0, std::chrono::seconds(600)};
  for (int i = 0; i < 100; ++i) t.Failed("192.0.2.1", "alice", limits, i);
  EXPECT_EQ(t.Check("192.0.2.1", "alice", limits, 100), Verdict::kOk);
  EXPECT_EQ(t.tracked(), 0u);
}

TEST(AuthThrottleTest, AFloodOfDistinctKeysStaysBounded) {
  AuthThrottle t(/*max_keys=*/100);
  const AuthThrottle::Limits limits{5, 5, std::chrono::seconds(600)};
  for (int i = 0; i < 10'000; ++i) {
    t.Failed("10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256),
             std::to_string(i) + std::string(1000, 'u'), limits, i);
  }
  EXPECT_LE(t.tracked(), 200u);
  // Expired windows make room before live ones are dropped.
  t.Failed("192.0.2.1", "alice", limits, 601 * kSecond);
  EXPECT_LE(t.tracked(), 2u);
}

}  // namespace
}  // namespace mx::ingress
