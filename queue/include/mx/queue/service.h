// service.h — a queue node: the replicas of every shard it hosts, and the
// mx.v1.Queue gRPC service in front of them.
//
// Each hosted shard is a StateMachine replicated by a RaftLog. Only a shard's
// leader answers Enqueue, Pull, Ack and reads; the others answer UNAVAILABLE
// with the leader's address in the "mx-leader" trailing metadata. The leader
// runs the scheduler: lease handout (Pull) and the tick that returns due
// deferred recipients and expired leases to ready. Blocking work (RocksDB,
// waiting for commit) happens on gRPC's threads and the Raft loop threads,
// never on an Asio event loop.
#pragma once

#include <functional>
#include <memory>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/result.h"

namespace grpc {
class Service;
}

namespace mx::v1 {
class NewMessage;
}

namespace mx::queue {

class QueueNode {
 public:
  virtual ~QueueNode() = default;
  virtual grpc::Service* service() = 0;           // mx.v1.Queue
  virtual grpc::Service* metadata_service() = 0;  // mx.v1.Metadata (metadata.proto), on the same server
  // Enqueue for an ingress in the same process (mxd all): the checks and the
  // commit of the gRPC method, without its transport. False, with `done` not
  // called, when this node does not lead `shard`; otherwise `done` runs once
  // the message is committed (OK) or refused — on the Raft loop thread or,
  // for a refusal before the log, on the caller's.
  virtual bool EnqueueLocal(uint32_t shard, const v1::NewMessage& message, std::function<void(const Status&)> done) = 0;
  // Stops the tick threads, ends Pull streams and closes every shard's log.
  virtual void Stop() = 0;
};

Result<std::unique_ptr<QueueNode>> StartQueueNode(const QueueConfig& config, const Clock& clock);

}  // namespace mx::queue
