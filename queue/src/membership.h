// membership.h — a shard's Raft membership, changed online by the operator:
// add a replica (raft_add, then raft_assign once it caught up), remove one,
// hand leadership to another voter (raft_transfer). One change of a shard at
// a time; each refused with FAILED_PRECONDITION and the reason when it would
// hurt the group (an unreachable new replica, a removal that leaves the
// answering voters short of a quorum). Runs on gRPC threads and waits for
// the change; the Raft work itself happens on the shard's loop (RaftLog).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <string>

#include "metadata_service.h"
#include "mx/common/clock.h"
#include "mx/v1/queue.pb.h"
#include "raft_log.h"

namespace mx::queue {

class Membership {
 public:
  // replica: the shard (leadership, commits, its tag); address_of: a node's
  // gRPC address as the shard knows it ("" unknown).
  Membership(MetadataReplica& replica, RaftLog& log, uint32_t shard, uint64_t self,
             std::chrono::milliseconds election_timeout, const Clock& clock,
             std::function<std::string(uint64_t)> address_of)
      : replica_(replica),
        log_(log),
        shard_(shard),
        self_(self),
        election_timeout_(election_timeout),
        clock_(clock),
        address_of_(std::move(address_of)) {}

  grpc::Status AddReplica(grpc::ServerContext* ctx, const v1::AddReplicaRequest* req);
  grpc::Status RemoveReplica(grpc::ServerContext* ctx, const v1::RemoveReplicaRequest* req);
  grpc::Status TransferLeader(grpc::ServerContext* ctx, const v1::TransferLeaderRequest* req,
                              v1::TransferLeaderResponse* resp);

 private:
  class ChangeGuard;
  grpc::Status ProbeReplica(uint64_t node_id, const std::string& address) const;
  template <typename Fn>
  // Starts a change (start(done)) and waits up to `limit` for done.
  Status WaitChange(Fn start, std::chrono::seconds limit = std::chrono::minutes(2));

  MetadataReplica& replica_;
  RaftLog& log_;
  const uint32_t shard_;
  const uint64_t self_;
  const std::chrono::milliseconds election_timeout_;
  const Clock& clock_;
  const std::function<std::string(uint64_t)> address_of_;
  std::mutex change_mu_;
  std::string change_in_flight_;  // what ChangeGuard holds ("" = none)
};

}  // namespace mx::queue
