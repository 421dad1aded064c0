// command_log.h — how queue commands become durable and applied.
//
// CommandLog is the seam between the queue service and replication: the service
// proposes commands; the log makes them durable (fsync'd WAL locally, a Raft
// quorum when replicated), applies them through the StateMachine in order, and
// then calls each proposal's callback with its ApplyResult. Concurrent proposals
// are group-committed: one durable write covers many of them.
#pragma once

#include <functional>
#include <memory>

#include "mx/queue/state_machine.h"

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

struct LocalLogOptions {
  uint32_t max_commands = 512;
  uint64_t max_bytes = 16 << 20;
  std::chrono::microseconds linger{0};
};

// Single-node log: the state machine's synced RocksDB WriteBatch is the log.
// A committer thread takes every pending proposal (bounded by count and bytes)
// and applies them in one synced write.
std::unique_ptr<CommandLog> MakeLocalLog(StateMachine& sm, const LocalLogOptions& options);

}  // namespace mx::queue
