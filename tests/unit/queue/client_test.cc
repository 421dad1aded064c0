// client_test.cc — QueueRouter's memory of shard leaders, without a server.
#include <gtest/gtest.h>

#include "mx/queue/client.h"

namespace mx::queue {
namespace {

// NOLINTNEXTLINE(cert-err58-cpp): a test constant; a failed allocation here fails the test.
const grpc::Status kUnreachable(grpc::StatusCode::UNAVAILABLE,
                                "failed to connect to all addresses; last error: Connection refused");

TEST(QueueRouterTest, ShardsStartOnDifferentSeedsAndRotateWhenUnreachable) {
  QueueRouter r({"a:1", "b:1", "c:1"}, 2);
  EXPECT_EQ(r.Leader(0).address, "a:1");
  EXPECT_EQ(r.Leader(1).address, "b:1");
  grpc::ClientContext ctx;
  EXPECT_FALSE(r.Observe(0, "a:1", ctx, kUnreachable));  // no new leader known: back off
  EXPECT_EQ(r.Leader(0).address, "b:1");
  EXPECT_FALSE(r.Healthy(0));
  EXPECT_TRUE(r.Healthy(1));
  grpc::ClientContext ok_ctx;
  r.Observe(0, "b:1", ok_ctx, grpc::Status::OK);
  EXPECT_TRUE(r.Healthy(0));
  EXPECT_EQ(r.Leader(0).address, "b:1");
}

TEST(QueueRouterTest, ErrorsAboutTheRequestDoNotMoveTheLeader) {
  QueueRouter r({"a:1", "b:1"}, 1);
  grpc::ClientContext ctx;
  EXPECT_FALSE(r.Observe(0, "a:1", ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad qid")));
  EXPECT_EQ(r.Leader(0).address, "a:1");
  EXPECT_TRUE(r.Healthy(0));
}

TEST(QueueRouterTest, AStaleFailureAfterSomeoneMovedOnRetriesAtOnce) {
  QueueRouter r({"a:1", "b:1"}, 1);
  grpc::ClientContext c1, c2;
  r.Observe(0, "a:1", c1, kUnreachable);               // moves to b:1
  EXPECT_TRUE(r.Observe(0, "a:1", c2, kUnreachable));  // an older call to a:1: b:1 is already current
  EXPECT_EQ(r.Leader(0).address, "b:1");
}

TEST(QueueRouterTest, OnlyRefusalsAndFailedConnectsAreCertainlyNotApplied) {
  grpc::ClientContext ctx;
  EXPECT_TRUE(CertainlyNotApplied(ctx, kUnreachable));
  EXPECT_FALSE(CertainlyNotApplied(ctx, grpc::Status(grpc::StatusCode::UNAVAILABLE, "Socket closed")));
  EXPECT_FALSE(CertainlyNotApplied(ctx, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded")));
  EXPECT_FALSE(CertainlyNotApplied(ctx, grpc::Status::OK));
}

// The shard map (ShardMapFollower's input): new shards join the table as
// they appear, and only active shards take new mail; draining ones still
// serve (delivery, admin), creating and retired ones do neither.
TEST(QueueRouterTest, ShardMapGrowsTheTableAndSaysWhichShardsTakeMail) {
  QueueRouter r({"a:1", "b:1", "c:1"}, 2);
  EXPECT_EQ(r.shards(), 2u);
  EXPECT_TRUE(r.Accepting(1));
  EXPECT_FALSE(r.Serving(2));  // not known yet
  auto info = [](uint32_t shard, v1::ShardInfo::State state) {
    v1::ShardInfo s;
    s.set_shard(shard);
    s.set_state(state);
    s.add_replicas(1);
    return s;
  };
  std::vector<v1::ShardInfo> map = {info(0, v1::ShardInfo::SHARD_ACTIVE), info(1, v1::ShardInfo::SHARD_DRAINING),
                                    info(3, v1::ShardInfo::SHARD_CREATING)};
  EXPECT_TRUE(r.ApplyShardMap(map));
  EXPECT_EQ(r.shards(), 4u);
  EXPECT_TRUE(r.Accepting(0));
  EXPECT_FALSE(r.Accepting(1));
  EXPECT_TRUE(r.Serving(1));
  EXPECT_FALSE(r.Serving(2));  // a gap in the map: never created
  EXPECT_FALSE(r.Accepting(3));
  EXPECT_FALSE(r.Serving(3));
  EXPECT_EQ(r.Leader(3).address, "a:1");  // new shards start at a seed, like the configured ones
  EXPECT_FALSE(r.ApplyShardMap(map));     // nothing new
  map[2] = info(3, v1::ShardInfo::SHARD_ACTIVE);
  map.push_back(info(1, v1::ShardInfo::SHARD_RETIRED));
  EXPECT_TRUE(r.ApplyShardMap(map));
  EXPECT_TRUE(r.Accepting(3));
  EXPECT_FALSE(r.Serving(1));
}

}  // namespace
}  // namespace mx::queue
