// client.h — how ingress, delivery and control reach each shard's leader.
//
// QueueRouter keeps one channel per queue node address and, per shard, the
// address believed to lead it. A replica that is not the leader answers
// UNAVAILABLE with the leader's address in the "mx-leader" trailing metadata;
// Observe() follows that hint, or moves on to the next known address when the
// target is unreachable or knows no leader. Callers bound their retries with
// deadlines; the router only remembers. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mx/v1/metadata.grpc.pb.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::queue {

constexpr const char* kLeaderMetadataKey = "mx-leader";
// Set on UNAVAILABLE answers given before the request reached the Raft log:
// the request certainly had no effect.
constexpr const char* kRejectedMetadataKey = "mx-rejected";

// The shard whose Raft group also keeps the cluster's metadata (node table,
// drain, policy, site status, suppressions); its leader keeps the permits.
constexpr uint32_t kMetadataShard = 0;

// Longest a delivery permit hold lives without renewal, and a new permit
// leader's grace period. Workers renew every third of it.
constexpr int64_t kPermitTtlUs = 10'000'000;

// Whether a failed call certainly had no effect on the queue: refused before
// the log, or never connected. Otherwise (a timeout, a connection lost
// mid-call, leadership lost after proposing) the command may still commit.
bool CertainlyNotApplied(const grpc::ClientContext& ctx, const grpc::Status& status);

class QueueRouter {
 public:
  QueueRouter(std::vector<std::string> seeds, uint32_t shards);

  // One more than the highest shard id known (configured, or learnt from the
  // shard map); ids below it may be retired or still creating.
  uint32_t shards() const;
  // Ingress places new messages on it (active in the shard map).
  bool Accepting(uint32_t shard) const;
  // It holds or may hold mail: active or draining (delivery pulls from it,
  // control asks it). False for creating and retired shards.
  bool Serving(uint32_t shard) const;
  // The shard map says it retired (empty and closed for good).
  bool Retired(uint32_t shard) const;
  // The shard map (ShardMapFollower): grows the table and sets each state.
  // Returns whether anything changed.
  bool ApplyShardMap(const std::vector<v1::ShardInfo>& map);

  struct Target {
    v1::Queue::Stub* stub;
    v1::Metadata::Stub* metadata;  // the same node's metadata service (MetadataClient's)
    std::string address;
  };
  // The replica believed to lead `shard`.
  Target Leader(uint32_t shard);
  // Learns from a call to `address` for `shard` that ended with `status`.
  // Returns true when a different leader is now known, so retrying at once
  // makes sense; false when the caller should back off before retrying.
  bool Observe(uint32_t shard, const std::string& address, const grpc::ClientContext& ctx, const grpc::Status& status);
  // False for a couple of seconds after a call to the shard found no leader:
  // ingress prefers other shards meanwhile, then tries this one again.
  bool Healthy(uint32_t shard) const;
  // Every address known (seeds and learnt leaders).
  std::vector<std::string> Addresses() const;

 private:
  struct ShardState {
    std::string leader;
    v1::ShardInfo::State state = v1::ShardInfo::SHARD_ACTIVE;
    size_t cursor = 0;
    std::chrono::steady_clock::time_point failed_at{};  // epoch: never failed
  };
  struct Stubs {  // one channel per address
    std::unique_ptr<v1::Queue::Stub> queue;
    std::unique_ptr<v1::Metadata::Stub> metadata;
  };
  const Stubs& StubsFor(const std::string& address);  // mu_ held

  mutable std::mutex mu_;
  std::vector<std::string> addresses_;
  std::map<std::string, Stubs> stubs_;
  std::vector<ShardState> shards_;
};

}  // namespace mx::queue
