// shard_spread_test.cc — new mail goes to one shard for a run of messages or
// a short interval, then to the next, so messages that arrive together share
// a shard's batches and Raft entries while every shard gets its share.
#include "shard_spread.h"

#include <gtest/gtest.h>

#include <map>

namespace mx::ingress {
namespace {

using namespace std::chrono_literals;

TEST(ShardSpread, ARunOfMessagesThenTheNextShard) {
  ShardSpread spread(0);
  const auto t = std::chrono::steady_clock::time_point{} + 1h;
  const uint32_t first = spread.Next(3, t);
  for (uint32_t i = 1; i < ShardSpread::kRunMessages; ++i) EXPECT_EQ(spread.Next(3, t), first) << i;
  const uint32_t second = spread.Next(3, t);
  EXPECT_EQ(second, (first + 1) % 3);
  // Every shard gets its share over many runs.
  ShardSpread fresh(5);
  std::map<uint32_t, int> count;
  for (uint32_t i = 0; i < 3 * 100 * ShardSpread::kRunMessages; ++i) ++count[fresh.Next(3, t)];
  ASSERT_EQ(count.size(), 3u);
  for (const auto& [shard, n] : count) EXPECT_EQ(n, 100 * static_cast<int>(ShardSpread::kRunMessages)) << shard;
}

TEST(ShardSpread, ARunEndsAfterItsIntervalHoweverFewItCarried) {
  ShardSpread spread(0);
  auto t = std::chrono::steady_clock::time_point{} + 1h;
  const uint32_t first = spread.Next(4, t);
  t += ShardSpread::kRunInterval - 1ms;
  EXPECT_EQ(spread.Next(4, t), first);
  t += 1ms;
  EXPECT_EQ(spread.Next(4, t), (first + 1) % 4);
}

TEST(ShardSpread, OneShardIsAlwaysThatShardAndFewerShardsStayInRange) {
  ShardSpread spread(7);
  const auto t = std::chrono::steady_clock::time_point{} + 1h;
  for (int i = 0; i < 500; ++i) EXPECT_EQ(spread.Next(1, t), 0u);
  for (int i = 0; i < 500; ++i) EXPECT_LT(spread.Next(2, t + std::chrono::milliseconds(i)), 2u);
}

}  // namespace
}  // namespace mx::ingress
