// retry_test.cc — the exponential retry schedule (MinQueueAge, cap, jitter).
#include "retry.h"

#include <gtest/gtest.h>

namespace mx::queue {
namespace {

constexpr int64_t kMin = 60'000'000;    // 1m
constexpr int64_t kMax = 3600'000'000;  // 1h

TEST(RetryDelay, DoublesFromMinQueueAgeUpToTheCap) {
  EXPECT_EQ(RetryDelayUs(0, kMin, kMax, 0), kMin);
  EXPECT_EQ(RetryDelayUs(1, kMin, kMax, 0), 2 * kMin);
  EXPECT_EQ(RetryDelayUs(2, kMin, kMax, 0), 4 * kMin);
  EXPECT_EQ(RetryDelayUs(5, kMin, kMax, 0), 32 * kMin);
  EXPECT_EQ(RetryDelayUs(6, kMin, kMax, 0), kMax);     // 64m capped at 1h
  EXPECT_EQ(RetryDelayUs(1000, kMin, kMax, 0), kMax);  // no overflow however many attempts
}

TEST(RetryDelay, JitterSpreadsButNeverExceedsTheCap) {
  EXPECT_EQ(RetryDelayUs(0, kMin, kMax, 0.25), kMin + kMin / 4);
  EXPECT_EQ(RetryDelayUs(3, kMin, kMax, 0.1), 8 * kMin + 8 * kMin / 10);
  EXPECT_EQ(RetryDelayUs(5, kMin, 35 * kMin, 0.24), 35 * kMin);  // 32m × 1.24 > 35m: capped
}

}  // namespace
}  // namespace mx::queue
