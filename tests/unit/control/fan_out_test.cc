// fan_out_test.cc — every shard asked at once, answered by one deadline.
#include "fan_out.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace mx::control {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(FanOutDeadline, LeavesAMarginToAnswerBeforeTheCallersDeadline) {
  const Deadline now{seconds(1'000'000)};
  EXPECT_EQ(FanOutDeadline(now + seconds(5), milliseconds(10'000), now), now + seconds(5) - milliseconds(500));
  EXPECT_EQ(FanOutDeadline(now + seconds(60), milliseconds(10'000), now), now + seconds(59));  // at most 1 s
  EXPECT_EQ(FanOutDeadline(now + milliseconds(1000), milliseconds(10'000), now), now + milliseconds(800));  // 200 ms
  EXPECT_EQ(FanOutDeadline(now + milliseconds(100), milliseconds(10'000), now), now);  // already too late
}

TEST(FanOutDeadline, NoCallerDeadlineMeansTheFallback) {
  const Deadline now{seconds(1'000'000)};
  EXPECT_EQ(FanOutDeadline(Deadline::max(), milliseconds(10'000), now), now + seconds(10));
}

TEST(FanOut, AsksEveryShardAtOnceAndKeepsShardOrder) {
  std::atomic<int> running{0}, most{0};
  const auto deadline = std::chrono::system_clock::now() + seconds(30);
  auto statuses = FanOut(4, deadline, [&](uint32_t shard, Deadline d) {
    EXPECT_EQ(d, deadline);
    const int now = ++running;
    for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
    }
    // Every call waits until all four run together: one at a time never gets there.
    for (int k = 0; k < 2000 && most.load() < 4; ++k) std::this_thread::sleep_for(milliseconds(5));
    --running;
    if (shard == 2) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no leader");
    return grpc::Status::OK;
  });
  EXPECT_EQ(most.load(), 4);
  ASSERT_EQ(statuses.size(), 4u);
  EXPECT_TRUE(statuses[0].ok());
  EXPECT_TRUE(statuses[1].ok());
  EXPECT_EQ(statuses[2].error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(statuses[3].ok());
  EXPECT_EQ(DescribeFailures(statuses), "shard 2: no leader");
}

TEST(FanOut, DescribesEveryFailedShard) {
  std::vector<grpc::Status> s{grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"), grpc::Status::OK,
                              grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused")};
  EXPECT_EQ(DescribeFailures(s), "shard 0: Deadline Exceeded; shard 2: connection refused");
  EXPECT_EQ(DescribeFailures({grpc::Status::OK}), "");
}

}  // namespace
}  // namespace mx::control
