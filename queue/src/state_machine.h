// state_machine.h — the queue's deterministic state machine over RocksDB.
//
// Every state change is a QueueCommand applied here, in log order, by every
// replica. Apply depends only on the command and the current state — time comes
// from the command (leader-stamped) — so replicas converge. The applied index is
// written in the same WriteBatch as the changes, and entries at or below it are
// skipped, so replaying a log after a restart is harmless.
//
// Failure: Open() and Apply() return a Status; a failed Apply() wrote nothing.
#pragma once

#include <rocksdb/db.h>

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <tuple>
#include <vector>

#include "mx/common/result.h"
#include "mx/v1/queue.pb.h"

namespace mx::queue {

struct StateMachineOptions {
  std::string dir;
  // sendmail priority: size - class*ClassFactor + nrcpts*RecipientFactor
  // (+ attempts*RetryFactor after failures); lower runs first.
  int64_t class_factor = 1800;
  int64_t recipient_factor = 30000;
  int64_t retry_factor = 90000;
  // QueueSortOrder: the order of the ready index (cluster-wide; applies to
  // recipients that become ready after a change).
  //   priority: sendmail's priority, plus attempts x RetryFactor (lower first)
  //   time:     arrival order (oldest first)
  //   host:     grouped by recipient domain (so one connection carries many),
  //             priority order within a domain
  //   random:   a hash of queue id, recipient and attempt (deterministic on
  //             every replica)
  enum class SortOrder { kPriority, kTime, kHost, kRandom };
  SortOrder sort_order = SortOrder::kPriority;
  // QueueLA: a message enqueued with queue_only waits this long (a queue run
  // brings it forward).
  int64_t queue_only_delay_us = 60'000'000;
};

// What applying one command produced.
struct ApplyResult {
  Status status;
  std::vector<v1::RcptRef> leased;          // LeaseOp: the items actually leased
  std::vector<v1::Recipient> leased_rcpts;  // ... and their records as leased
  uint32_t made_ready = 0;                  // recipients that became ready
  uint64_t purged = 0;                      // PurgeHostsOp: host statuses removed
  uint64_t recipients = 0;                  // ManageOp: recipients held or deleted
  uint64_t messages = 0;                    // ManageOp: messages deleted
  uint64_t skipped = 0;                     // ManageOp: messages with a lease in flight
  uint32_t suppressed = 0;                  // SuppressOp: addresses added
  uint32_t unsuppressed = 0;                // SuppressOp: addresses removed
  std::vector<std::string> qids;            // MoveOp: the messages locked or deleted
};

// An entry of an ordered recipient index: (priority or time, qid, index).
struct IndexKey {
  int64_t order = 0;
  std::string qid;  // 14 characters: fits the small-string buffer, no allocation
  uint32_t index = 0;
  bool operator<(const IndexKey& o) const { return std::tie(order, qid, index) < std::tie(o.order, o.qid, o.index); }
};

struct QueueCounts {
  int64_t messages = 0;
  std::array<int64_t, 7> by_status{};  // indexed by v1::RcptStatus
};

class StateMachine {
 public:
  static Result<std::unique_ptr<StateMachine>> Open(const StateMachineOptions& options);
  ~StateMachine();

  // Applies the commands of log entry `index` in one atomic write that also
  // records `index` as applied. An entry at or below the applied index is a
  // replay and is skipped (every result OK with no effect).
  [[nodiscard]] Status Apply(uint64_t index, const std::vector<const v1::QueueCommand*>& commands,
                             std::vector<ApplyResult>* results);

  // A RocksDB checkpoint of the committed state in `dir` (which must not
  // exist): hard links where possible, memtables flushed first. Returns the
  // files (name, size). Safe while readers run; Apply() must not run meanwhile
  // (the Raft loop calls both).
  Result<std::vector<std::pair<std::string, uint64_t>>> CreateCheckpoint(const std::string& dir) const;
  // Replaces the whole store with the checkpoint in checkpoint_dir (moved, not
  // copied) and reloads the in-memory indexes. Readers wait meanwhile.
  [[nodiscard]] Status ReplaceFrom(const std::string& checkpoint_dir);
  // A 64-bit hash of every key and value in every column family: replicas at
  // the same applied index must have equal digests.
  uint64_t Digest() const;
  // Queue replicas recorded by MemberOp: node id -> gRPC address.
  std::map<uint64_t, std::string> Members() const;
  // The replica a leadership transfer named to lead this shard (0: none).
  uint64_t PreferredLeader() const;

  uint64_t applied_index() const { return applied_.load(); }
  // Bytes in memtables (the WAL is off: not yet anywhere on disk).
  uint64_t UnflushedBytes() const;
  QueueCounts counts() const;

  // ---- reads of committed state (any thread) ----
  // Up to max_items ready recipients in sort order.
  std::vector<v1::RcptRef> ReadyItems(size_t max_items) const;
  // Time of the earliest deferred retry or lease expiry, or INT64_MAX.
  int64_t EarliestScheduled() const;
  // Arrival time (from the qid) of the oldest queued message, or 0 if empty.
  int64_t OldestArrival() const;
  Result<v1::Envelope> GetEnvelope(const std::string& qid) const;
  Result<std::string> GetBody(const std::string& qid) const;
  Result<v1::Recipient> GetRecipient(const std::string& qid, uint32_t index) const;
  std::vector<v1::Recipient> GetRecipients(const std::string& qid, uint32_t nrcpts) const;
  void List(const v1::ListRequest& filter, v1::ListResponse* out) const;
  void Stats(v1::GetStatsResponse* out) const;
  // Every host status this shard recorded.
  void HostStatuses(v1::ListHostStatusResponse* out) const;
  // The node table (heartbeats, drain flags).
  void Nodes(v1::ListNodesResponse* out) const;
  bool NodeDrain(const std::string& name) const;
  // The sites suspended or slowed at now_us.
  void Sites(int64_t now_us, v1::ListSiteStatusResponse* out) const;
  // The suppression list: one address, or the change log after req.after_seq.
  void Suppressions(const v1::ListSuppressionsRequest& req, v1::ListSuppressionsResponse* out) const;
  // A draining shard's messages for the mover: up to `max` not yet locked
  // (*movable) and those locked with their target (*locked).
  // The scan starts after queue id `after` ("": the start); *last is the
  // last queue id seen ("" when the scan reached the end).
  void MoveCandidates(size_t max, const std::string& after, std::vector<std::string>* movable,
                      std::vector<std::pair<std::string, uint32_t>>* locked, std::string* last) const;
  // The shard map's recorded entries (shards added online, and configured
  // ones whose state changed), by shard id.
  std::vector<v1::ShardInfo> ShardMap() const;
  // The pushed acceptance policy (empty version: none).
  v1::PolicyBundle CurrentPolicy() const;
  std::string PolicyVersion() const;

 private:
  // The ready-index key of a recipient under options_.sort_order.
  int64_t SortKey(const v1::Envelope& env, const v1::Recipient& r, int64_t retry_factor) const;
  class Batch;    // one entry's write (apply.h)
  class Applier;  // one entry's command handlers (apply.h)
  StateMachine() = default;
  Status OpenDb();
  void CloseDb();
  Result<v1::Recipient> GetRecipientUnlocked(const std::string& qid, uint32_t index) const;
  std::vector<v1::Recipient> GetRecipientsUnlocked(const std::string& qid, uint32_t nrcpts) const;

  // Held shared by every reader and by Apply(), exclusively by ReplaceFrom().
  mutable std::shared_mutex db_mu_;
  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle *msg_ = nullptr, *rcpt_ = nullptr, *ready_ = nullptr, *sched_ = nullptr,
                              *lease_ = nullptr, *stats_ = nullptr, *meta_ = nullptr, *host_ = nullptr;
  StateMachineOptions options_;
  std::atomic<uint64_t> applied_{0};

  // Committed state kept in memory, updated after each successful write:
  // counters, and mirrors of the `ready` and `lease` column families. A queue
  // used as a FIFO leaves a trail of tombstones at the front of those CFs, so
  // they are never scanned from RocksDB after Open(). Deferred recipients
  // (`sched`) stay on disk only; sched_floor_ is a time below which every
  // sched entry is already consumed, so scans start there.
  mutable std::mutex mem_mu_;
  QueueCounts counts_;
  std::set<IndexKey> ready_index_;
  std::set<IndexKey> lease_index_;
  int64_t sched_floor_ = INT64_MIN;
  // A lower bound of the `msg` CF's live keys: OldestArrival seeks here
  // rather than from the first key, past the FIFO's trail of tombstones
  // (scanning them every tick cost 50-90 µs per message under load). Raised
  // by OldestArrival to the first live key it finds; lowered by every
  // message added below it (an Import keeps its source's older qid).
  mutable std::string oldest_hint_;
  std::map<uint64_t, std::string> members_;
  std::string policy_version_;  // of the pushed policy in meta (cheap for heartbeats)
  uint64_t preferred_leader_ = 0;
};

}  // namespace mx::queue
