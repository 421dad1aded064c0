// metadata_service.h — the mx.v1.Metadata gRPC service of a queue node, in
// front of its replica of the metadata shard: node table, drain, policy,
// site status and suppressions are replicated commands on that shard's log;
// the delivery permits live in the leader's memory (mx/queue/permits.h).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "mx/common/clock.h"
#include "mx/v1/metadata.grpc.pb.h"
#include "permits.h"
#include "state_machine.h"

namespace mx::queue {

// What the service needs of this node's replica of the metadata shard.
class MetadataReplica {
 public:
  virtual ~MetadataReplica() = default;
  virtual bool IsLeader() const = 0;
  // UNAVAILABLE with the leader's address (refused before the log).
  virtual grpc::Status RefuseNotLeader(grpc::ServerContextBase* ctx) const = 0;
  // A failed commit as a gRPC status, with the leader hint if leadership moved.
  virtual grpc::Status CommitError(grpc::ServerContextBase* ctx, const Status& st) const = 0;
  // Proposes cmd and waits until it is committed and applied (or refused).
  virtual ApplyResult CommitAndWait(v1::QueueCommand cmd) = 0;
  virtual const StateMachine& state() const = 0;
  virtual const std::string& tag() const = 0;
};

// The shards the configuration starts with (queue.shards, bootstrapped by
// the non-joining queue.peers) and the queue nodes a new shard may use.
struct ShardDefaults {
  uint32_t shards = 1;
  std::vector<uint64_t> bootstrap;  // node ids
  std::set<uint64_t> known;         // every node id in queue.peers
};

class MetadataService final : public v1::Metadata::Service {
 public:
  MetadataService(MetadataReplica& replica, const Clock& clock, ShardDefaults defaults)
      : replica_(replica), clock_(clock), defaults_(std::move(defaults)) {}

  // The whole shard map: the configured shards (as recorded, or active on
  // the bootstrap peers when never changed) and the recorded later ones.
  static std::vector<v1::ShardInfo> FullShardMap(const std::vector<v1::ShardInfo>& recorded,
                                                 const ShardDefaults& defaults);

  // Leadership of the metadata shard gained: slots a previous leader granted
  // may still be in use, so none are granted for one TTL while their holders
  // renew them here (predecessor false: none can be, e.g. a single replica's
  // first term).
  void BecameLeader(bool predecessor) { permits_.BecameLeader(clock_.NowUnixMicros(), predecessor ? kPermitTtlUs : 0); }

  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override;
  grpc::Status ListNodes(grpc::ServerContext* ctx, const v1::ListNodesRequest* req,
                         v1::ListNodesResponse* resp) override;
  grpc::Status SetDrain(grpc::ServerContext* ctx, const v1::SetDrainRequest* req, v1::SetDrainResponse*) override;
  grpc::Status PutPolicy(grpc::ServerContext* ctx, const v1::PutPolicyRequest* req,
                         v1::PutPolicyResponse* resp) override;
  grpc::Status GetPolicy(grpc::ServerContext* ctx, const v1::GetPolicyRequest* req,
                         v1::GetPolicyResponse* resp) override;
  grpc::Status SetSiteStatus(grpc::ServerContext* ctx, const v1::SetSiteStatusRequest* req,
                             v1::SetSiteStatusResponse*) override;
  grpc::Status ListSiteStatus(grpc::ServerContext* ctx, const v1::ListSiteStatusRequest* req,
                              v1::ListSiteStatusResponse* resp) override;
  grpc::Status Suppress(grpc::ServerContext* ctx, const v1::SuppressRequest* req, v1::SuppressResponse* resp) override;
  grpc::Status ListSuppressions(grpc::ServerContext* ctx, const v1::ListSuppressionsRequest* req,
                                v1::ListSuppressionsResponse* resp) override;
  grpc::Status Permit(grpc::ServerContext* ctx, const v1::PermitRequest* req, v1::PermitResponse* resp) override;
  // metadata_shards.cc
  grpc::Status GetShardMap(grpc::ServerContext* ctx, const v1::GetShardMapRequest* req,
                           v1::GetShardMapResponse* resp) override;
  grpc::Status AddShard(grpc::ServerContext* ctx, const v1::AddShardRequest* req, v1::AddShardResponse* resp) override;
  grpc::Status SetShardState(grpc::ServerContext* ctx, const v1::SetShardStateRequest* req,
                             v1::SetShardStateResponse* resp) override;

 private:
  v1::QueueCommand Command() const;
  grpc::Status Committed(grpc::ServerContext* ctx, v1::QueueCommand cmd, ApplyResult* r = nullptr);

  std::vector<v1::ShardInfo> ShardMap() const { return FullShardMap(replica_.state().ShardMap(), defaults_); }

  MetadataReplica& replica_;
  const Clock& clock_;
  const ShardDefaults defaults_;
  Permits permits_;
  std::mutex policy_mu_;  // one version number per put
  std::mutex shard_mu_;   // one shard added at a time (the next free id)
};

}  // namespace mx::queue
