// fsm.h — the queue state machine as a libraft FSM (internal to queue/raft/).
//
// Entries are serialized v1::QueueEntry batches; the entry's Raft index is the
// StateMachine's applied index. Snapshots are manifests of RocksDB checkpoints
// (see SnapshotManifest in queue.proto): taking one hard-links the store into
// snapshots/<index>/; installing one fetches the listed files from the replica
// that took it, in chunks, and swaps the store. The state never passes through
// memory whole.
//
// Every callback runs on the Raft loop thread, except SnapshotAsync (libuv's
// thread pool; the loop goes on applying meanwhile).
#pragma once

// raft.h (libraft 0.15) has no extern "C" guards of its own.
extern "C" {
#include <raft.h>
}

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "raft_log.h"
#include "state_machine.h"

namespace mx::queue::raft {

class QueueFsm {
 public:
  struct Options {
    uint32_t shard = 0;
    uint64_t node_id = 0;
    std::string grpc_address;  // where FetchSnapshot reaches this replica
    std::string snapshot_dir;  // checkpoints live in snapshot_dir/<index>
    unsigned keep_snapshots = 2;
  };
  QueueFsm(StateMachine& sm, Options options, SnapshotFetcher fetch);

  raft_fsm* fsm() { return &fsm_; }
  // Checkpoints are taken on the io's thread pool (the default; needs a raft_io
  // with async_work) or, off, on the loop thread. Before raft_init.
  void UseAsyncSnapshots(bool on);
  // The raft instance driving this FSM: apply reads its last_applied to learn
  // the entry's index (libraft 0.15 does not pass it).
  void Attach(struct raft* r) { raft_ = r; }
  // Leader side: where the results of entry `index` go (nullptr: nobody waits).
  std::function<std::vector<ApplyResult>*(uint64_t index)> result_sink;
  // Set (from any thread) when the log stops: a failing apply stops retrying.
  std::atomic<bool> stopping{false};

  uint64_t last_snapshot_index() const { return last_snapshot_index_.load(); }
  // Snapshots installed from another replica (fetched, not our own).
  uint64_t installs() const { return installs_; }

  // Encodes commands as one entry payload in raft_malloc'd memory.
  static raft_buffer Encode(const v1::QueueEntry& entry);

 private:
  static int Apply(raft_fsm* fsm, const raft_buffer* buf, void** result);
  static int Snapshot(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs);
  static int SnapshotAsync(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs);
  static int SnapshotSync(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs);
  static int SnapshotFinalize(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs);
  static int Restore(raft_fsm* fsm, raft_buffer* buf);
  void PruneSnapshots(uint64_t keep_from);

  StateMachine& sm_;
  Options options_;
  SnapshotFetcher fetch_;
  raft_fsm fsm_{};
  struct raft* raft_ = nullptr;
  std::atomic<uint64_t> last_snapshot_index_{0};  // written on the thread pool
  uint64_t snapshot_index_ = 0;                   // of the snapshot being taken
  uint64_t installs_ = 0;
  std::vector<ApplyResult> scratch_;
};

}  // namespace mx::queue::raft
