// apply.h — how one Raft log entry's commands change the queue's state:
// StateMachine::Apply builds an Applier, dispatches each command to its
// handler, then commits everything in one RocksDB write. Handlers live in
// one file per group: apply_data.cc (the data path: enqueue, lease, ack,
// tick, release), apply_admin.cc (operator actions: queue runs, hold/
// release/delete/bounce, host-status purge, mailstats), apply_meta.cc (the
// metadata shard's records: members, node table, policy, sites,
// suppressions, the shard map).
//
// Determinism rules, for every handler: every replica applies the same
// commands in the same order and must reach the same bytes.
//  - Time is the command's now_unix_us (leader-stamped), never a clock.
//  - Read only the store through the Batch (which sees this entry's earlier
//    writes) and the in-memory mirrors of committed state; never a cache of
//    this replica's own, a random number or the process's configuration other
//    than StateMachineOptions (the same on every replica).
//  - Iterate in key order (RocksDB, std::map/std::set), never a hash map.
//  - A verdict on the command (not found, bad argument) goes in
//    ApplyResult::status and the handler returns OK: the entry still
//    applies. A returned error is a storage failure: nothing is written and
//    libraft retries the entry.
//  - In-memory changes are queued in ApplyContext and made only after the
//    write succeeded.
#pragma once

#include <rocksdb/utilities/write_batch_with_index.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "state_machine.h"

namespace mx::queue {

// Keys of the meta column family.
inline constexpr const char* kAppliedKey = "applied";
inline constexpr const char* kCountsKey = "counts";
inline constexpr const char* kStatsSinceKey = "stats_since";
inline constexpr const char* kMemberPrefix = "member/";
inline constexpr const char* kNodePrefix = "node/";
inline constexpr const char* kPolicyKey = "policy/current";
inline constexpr const char* kPreferredLeaderKey = "leader/preferred";
inline constexpr const char* kSitePrefix = "site/";
inline constexpr const char* kShardPrefix = "shard/";      // big-endian shard id -> ShardInfo
inline constexpr const char* kSuppPrefix = "supp/";        // address -> Suppression (current)
inline constexpr const char* kSuppSeqPrefix = "suppseq/";  // big-endian seq -> Suppression (its latest change)
inline constexpr const char* kSuppLastKey = "supp_last_seq";
inline constexpr const char* kSuppTotalKey = "supp_total";

Status FromRocks(const rocksdb::Status& s, const char* what);
std::string EncodeU64(uint64_t v);
uint64_t DecodeU64(const std::string& s);
inline bool IsFinal(v1::RcptStatus s) {
  return s == v1::RCPT_DELIVERED || s == v1::RCPT_BOUNCED;
}
void AddStats(v1::MailerStats* into, const v1::MailerStats& d);

// One atomic write under construction, readable through its own pending writes.
class StateMachine::Batch {
 public:
  explicit Batch(StateMachine& sm) : sm_(sm), wb_(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true) {}

  // NotFound is reported as false with OK status.
  Status Get(rocksdb::ColumnFamilyHandle* cf, const std::string& key, std::string* value, bool* found);
  template <typename Proto>
  Status GetProto(rocksdb::ColumnFamilyHandle* cf, const std::string& key, Proto* out, bool* found) {
    std::string v;
    auto st = Get(cf, key, &v, found);
    if (!st.ok() || !*found) return st;
    if (!out->ParseFromString(v)) return Status(Code::kDataLoss, "corrupt record " + key);
    return Status::Ok();
  }
  void Put(rocksdb::ColumnFamilyHandle* cf, const std::string& key, const std::string& value) {
    wb_.Put(cf, key, value);
  }
  void PutProto(rocksdb::ColumnFamilyHandle* cf, const std::string& key, const google::protobuf::Message& m) {
    wb_.Put(cf, key, m.SerializeAsString());
  }
  void Delete(rocksdb::ColumnFamilyHandle* cf, const std::string& key) { wb_.Delete(cf, key); }
  std::unique_ptr<rocksdb::Iterator> Iterator(rocksdb::ColumnFamilyHandle* cf);
  rocksdb::WriteBatch* write_batch() { return wb_.GetWriteBatch(); }

 private:
  StateMachine& sm_;
  rocksdb::WriteBatchWithIndex wb_;
};

// State that one Apply() call accumulates before its single write.
struct ApplyContext {
  // Changes to the in-memory indexes, replayed in order once the write succeeded.
  struct IndexOp {
    std::set<IndexKey>* index;
    bool add;
    IndexKey key;
  };
  std::vector<IndexOp> index_ops;
  int64_t sched_floor = INT64_MIN;
  std::optional<std::string> min_added_qid;  // the smallest qid this entry added (OldestArrival's hint)
  QueueCounts counts;
  std::map<std::string, v1::MailerStats> stats;
  bool stats_touched = false;
  std::vector<std::pair<uint64_t, std::string>> member_ops;  // "" = removed
  std::optional<std::string> policy_version;                 // a policy stored by this entry
  std::optional<uint64_t> preferred_leader;                  // a LeaderOp of this entry

  void Added(const std::string& qid) {
    if (!min_added_qid || qid < *min_added_qid) min_added_qid = qid;
  }
  void Move(v1::RcptStatus from, v1::RcptStatus to) {
    if (from != v1::RCPT_STATUS_UNSPECIFIED) --counts.by_status[from];
    if (to != v1::RCPT_STATUS_UNSPECIFIED) ++counts.by_status[to];
  }
  v1::MailerStats& Stats(const std::string& mailer) {
    auto& s = stats[mailer.empty() ? "esmtp" : mailer];
    s.set_mailer(mailer.empty() ? "esmtp" : mailer);
    stats_touched = true;
    return s;
  }
};

// One log entry's handlers over one Batch (not thread-safe: the Raft loop's).
class StateMachine::Applier {
 public:
  explicit Applier(StateMachine& sm);

  // One command; see the determinism rules above.
  [[nodiscard]] Status Dispatch(const v1::QueueCommand& cmd, ApplyResult* res);
  // The counters, stats and applied index, then the one write and the
  // in-memory mirrors. first_now: the entry's first command's time.
  [[nodiscard]] Status Commit(uint64_t index, int64_t first_now);

 private:
  // ---- data path (apply_data.cc) ----
  Status Enqueue(const v1::NewMessage& m, int64_t now, ApplyResult* res);
  Status Lease(const v1::LeaseOp& op, ApplyResult* res);
  Status Ack(const v1::AckOp& op, int64_t now, ApplyResult* res);
  Status AckRecipient(const v1::RecipientResult& result, int64_t now, v1::Envelope* env);
  Status RemoveMessage(const std::string& qid, const v1::Envelope& env);
  Status RecordHosts(const v1::AckOp& op, int64_t now);
  Status Tick(const v1::TickOp& op, int64_t now, ApplyResult* res);
  Status Release(const v1::ReleaseOp& op, ApplyResult* res);
  // ---- operator actions (apply_admin.cc) ----
  Status Run(const v1::RunOp& op, ApplyResult* res);
  Status Manage(const v1::ManageOp& op, ApplyResult* res);
  Status HoldOrRelease(const v1::ManageOp& op, const std::string& qid, const v1::Envelope& env,
                       std::vector<v1::Recipient>& rcpts, const std::vector<bool>& present, ApplyResult* res);
  Status Delete(const std::string& qid, const v1::Envelope& env, std::vector<v1::Recipient>& rcpts,
                const std::vector<bool>& present, ApplyResult* res);
  Status MarkBounce(const v1::ManageOp& op, const std::string& qid, const v1::Envelope& env,
                    std::vector<v1::Recipient>& rcpts, const std::vector<bool>& present, ApplyResult* res);
  Status PurgeHosts(const v1::PurgeHostsOp& op, ApplyResult* res);
  Status Stats(const v1::StatsOp& op, int64_t now);
  // ---- the metadata shard's records (apply_meta.cc) ----
  Status Member(const v1::MemberOp& op);
  Status Leader(const v1::LeaderOp& op);
  Status Node(const v1::NodeOp& op, int64_t now, ApplyResult* res);
  Status Policy(const v1::PolicyBundle& bundle, int64_t now);
  Status Site(const v1::SiteOp& op, int64_t now, ApplyResult* res);
  Status Suppress(const v1::SuppressOp& op, int64_t now, ApplyResult* res);
  Status ShardMap(const v1::ShardOp& op, int64_t now, ApplyResult* res);
  // ---- moving a draining shard's messages (apply_move.cc) ----
  Status MoveLock(const v1::MoveOp& op, ApplyResult* res);
  Status MoveDone(const v1::MoveOp& op, ApplyResult* res);
  Status Import(const v1::NewMessage& m, ApplyResult* res);

  // ---- recipient transitions shared by the handlers ----
  void ClearIndex(const v1::Recipient& r, const std::string& qid);
  void MakeReady(v1::Recipient* r, const std::string& qid, int64_t priority);
  // Back to ready after a deferral, a lost lease or an operator action:
  // retried mail sorts after fresh mail by attempts x RetryFactor. The caller
  // cleared the old index entry.
  Status Requeue(v1::Recipient* r, const std::string& qid, ApplyResult* res);
  // *queued when qid is queued here already; then res says ALREADY_EXISTS
  // (a retried Enqueue, a repeated copy).
  Status RefuseIfQueued(const std::string& qid, ApplyResult* res, bool* queued);

  StateMachine& sm_;
  Batch b_;
  ApplyContext ctx_;
};

}  // namespace mx::queue
