// service.h — the queue shard's gRPC service (mx.v1.Queue) and its scheduler.
//
// Owns: the state machine, the command log, lease handout (Pull), the tick that
// returns due deferred recipients and expired leases to ready. Blocking work
// (RocksDB, waiting for commit) happens on gRPC's threads and the log's thread,
// never on an Asio event loop.
#pragma once

#include <memory>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/result.h"

namespace grpc {
class Service;
}

namespace mx::queue {

class QueueNode {
 public:
  virtual ~QueueNode() = default;
  virtual grpc::Service* service() = 0;
  // Stops the tick thread, ends Pull streams and closes the log.
  virtual void Stop() = 0;
};

Result<std::unique_ptr<QueueNode>> StartQueueNode(const QueueConfig& config, const Clock& clock);

}  // namespace mx::queue
