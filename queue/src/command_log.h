// command_log.h — how queue commands become durable and applied.
//
// CommandLog is the seam between the queue service and replication: the service
// proposes commands; the log makes them durable on a quorum (RaftLog in
// raft_log.h — a one-replica group in `mxd all`), applies them through the
// StateMachine in order, and then calls each proposal's callback with its
// ApplyResult. Concurrent proposals are group-committed: one log entry and one
// fsync per replica cover many of them.
#pragma once

#include <functional>
#include <memory>

#include "state_machine.h"

namespace mx::queue {

class CommandLog {
 public:
  using Done = std::function<void(const ApplyResult&)>;
  virtual ~CommandLog() = default;
  // Proposes cmd; done runs on the log's thread after commit+apply (or with an
  // error status if the command could not be committed). done must not block.
  virtual void Propose(v1::QueueCommand cmd, Done done) = 0;
  // Whether this replica may propose (is the leader).
  virtual bool IsLeader() const = 0;
  virtual void Stop() = 0;
};

}  // namespace mx::queue
