// raft_log.h — a queue shard replica replicated with Raft (libraft).
//
// The CommandLog of a replicated shard. libraft and its libuv loop run on one
// thread per replica; Propose() may be called from any thread and never
// blocks: proposals are queued, and the loop thread group-commits everything
// waiting into one Raft entry (bounded by commands and bytes, with at most
// max_inflight_entries uncommitted), so one quorum round trip and one fsync
// cover many messages. Done callbacks run on the loop thread after the entry
// is committed on a quorum and applied locally.
//
// Nothing outside queue/raft/ includes raft.h; this header is the interface.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "command_log.h"
#include "mx/common/result.h"
#include "mx/v1/queue.pb.h"
#include "state_machine.h"

namespace mx::queue {

struct RaftPeer {
  uint64_t id = 0;
  std::string raft_address;  // host:port of this peer's Raft transport for the shard
};

inline constexpr std::chrono::microseconds kSharedLinger{2000};

struct RaftLogOptions {
  uint32_t shard = 0;
  uint64_t node_id = 0;
  std::string raft_address;  // advertised to peers
  std::string raft_bind;     // listen address ("" = raft_address)
  std::string grpc_address;  // this replica's queue gRPC address (snapshot fetches)
  std::string dir;           // libraft's log and metadata
  std::string snapshot_dir;  // RocksDB checkpoints backing Raft snapshots
  // Initial voters, used once to bootstrap a new shard. Empty: this replica
  // joins an existing group and waits to be added (AddReplica).
  std::vector<RaftPeer> bootstrap;
  unsigned election_timeout_ms = 1000;
  unsigned heartbeat_timeout_ms = 100;
  unsigned snapshot_threshold = 8192;  // entries between snapshots
  unsigned snapshot_trailing = 2048;   // entries kept after a snapshot
  size_t segment_size = 64 << 20;      // Raft log segment file size
  uint32_t max_batch_commands = 512;
  uint64_t max_batch_bytes = 16 << 20;
  std::chrono::microseconds linger{0};
  unsigned max_inflight_entries = 4;
  // While this process hosts more than one RaftLog: linger kSharedLinger with
  // one entry in flight instead of the two above. Every entry costs each
  // replica a write, an fsync and an apply whatever it carries, and a node
  // holding several groups' replicas pays that for each group: fewer, fuller
  // entries per group are what keep more shards from costing more CPU.
  bool shared_group_commit = false;
  // The replica that should lead this shard when it is a caught-up voter (0:
  // none). Spreading shards' leaders over the nodes spreads the leaders' work;
  // the leader hands over with raft_transfer, checked every few seconds. The
  // state machine's PreferredLeader (set by a transfer) overrides it.
  uint64_t preferred_leader = 0;
};

// The linger and entries in flight a RaftLog with options o uses while
// `running` RaftLogs (itself included) run in this process.
struct GroupCommit {
  std::chrono::microseconds linger;
  unsigned max_inflight_entries;
};
GroupCommit EffectiveGroupCommit(const RaftLogOptions& o, int running);

// Copies the checkpoint files a snapshot manifest lists into dir.
using SnapshotFetcher = std::function<Status(const v1::SnapshotManifest& manifest, const std::string& dir)>;

class RaftLog : public CommandLog {
 public:
  using ChangeDone = std::function<void(const Status&)>;
  // Raft state for cluster status (any thread; refreshed by the loop).
  virtual v1::ReplicaStatus GetStatus() const = 0;
  // Id of the current leader (0 if unknown).
  virtual uint64_t LeaderId() const = 0;
  // Runs fn whenever this replica gains or loses leadership (loop thread).
  virtual void OnLeadershipChange(std::function<void(bool leader)> fn) = 0;
  // Leader only: membership changes. done runs on the loop thread.
  virtual void AddVoter(uint64_t id, const std::string& raft_address, ChangeDone done) = 0;
  // Refused (kFailedPrecondition) when the voters left would not include a
  // quorum that answered the leader within about two election timeouts.
  virtual void RemoveServer(uint64_t id, ChangeDone done) = 0;
  // Leader only: hands leadership to voter id with raft_transfer; done runs
  // once libraft finished the attempt (the caller checks who leads then).
  virtual void TransferLeadership(uint64_t id, ChangeDone done) = 0;
};

Result<std::unique_ptr<RaftLog>> StartRaftLog(const RaftLogOptions& options, StateMachine& sm, SnapshotFetcher fetch);

}  // namespace mx::queue
