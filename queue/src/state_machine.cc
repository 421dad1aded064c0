// state_machine.cc — applies QueueCommands to RocksDB column families.
#include "mx/queue/state_machine.h"

#include <rocksdb/cache.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/utilities/write_batch_with_index.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/qid.h"
#include "mx/queue/keys.h"

namespace mx::queue {
namespace {

constexpr const char* kCfNames[] = {"default", "msg", "rcpt", "ready", "sched", "lease", "stats", "meta", "host"};
constexpr const char* kAppliedKey = "applied";
constexpr const char* kCountsKey = "counts";
constexpr const char* kStatsSinceKey = "stats_since";
constexpr const char* kMemberPrefix = "member/";
constexpr const char* kNodePrefix = "node/";
constexpr const char* kPolicyKey = "policy/current";
constexpr const char* kSitePrefix = "site/";
constexpr const char* kSuppPrefix = "supp/";        // address -> Suppression (current)
constexpr const char* kSuppSeqPrefix = "suppseq/";  // big-endian seq -> Suppression (its latest change)
constexpr const char* kSuppLastKey = "supp_last_seq";
constexpr const char* kSuppTotalKey = "supp_total";

Status FromRocks(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return Status::Ok();
  return Status(s.IsIOError() ? Code::kUnavailable : Code::kInternal, std::string(what) + ": " + s.ToString());
}

std::string EncodeU64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (56 - 8 * i)) & 0xff);
  return s;
}
uint64_t DecodeU64(const std::string& s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < s.size(); ++i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}

bool IsFinal(v1::RcptStatus s) {
  return s == v1::RCPT_DELIVERED || s == v1::RCPT_BOUNCED;
}

}  // namespace

// One atomic write under construction, readable through its own pending writes.
class StateMachine::Batch {
 public:
  explicit Batch(StateMachine& sm) : sm_(sm), wb_(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true) {}

  // NotFound is reported as false with OK status.
  Status Get(rocksdb::ColumnFamilyHandle* cf, const std::string& key, std::string* value, bool* found) {
    auto s = wb_.GetFromBatchAndDB(sm_.db_, rocksdb::ReadOptions(), cf, key, value);
    *found = s.ok();
    if (s.ok() || s.IsNotFound()) return Status::Ok();
    return FromRocks(s, "read");
  }
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
  std::unique_ptr<rocksdb::Iterator> Iterator(rocksdb::ColumnFamilyHandle* cf) {
    return std::unique_ptr<rocksdb::Iterator>(
        wb_.NewIteratorWithBase(cf, sm_.db_->NewIterator(rocksdb::ReadOptions(), cf)));
  }
  rocksdb::WriteBatch* write_batch() { return wb_.GetWriteBatch(); }

 private:
  StateMachine& sm_;
  rocksdb::WriteBatchWithIndex wb_;
};

namespace {

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
  QueueCounts counts;
  std::map<std::string, v1::MailerStats> stats;
  int64_t retry_factor = 0;

  void Move(v1::RcptStatus from, v1::RcptStatus to) {
    if (from != v1::RCPT_STATUS_UNSPECIFIED) --counts.by_status[from];
    if (to != v1::RCPT_STATUS_UNSPECIFIED) ++counts.by_status[to];
  }
  v1::MailerStats& Stats(const std::string& mailer) {
    auto& s = stats[mailer.empty() ? "esmtp" : mailer];
    s.set_mailer(mailer.empty() ? "esmtp" : mailer);
    return s;
  }
};

void AddStats(v1::MailerStats* into, const v1::MailerStats& d) {
  into->set_msgsfr(into->msgsfr() + d.msgsfr());
  into->set_bytes_from(into->bytes_from() + d.bytes_from());
  into->set_msgsto(into->msgsto() + d.msgsto());
  into->set_bytes_to(into->bytes_to() + d.bytes_to());
  into->set_msgsrej(into->msgsrej() + d.msgsrej());
  into->set_msgsdis(into->msgsdis() + d.msgsdis());
}

}  // namespace

Result<std::unique_ptr<StateMachine>> StateMachine::Open(const StateMachineOptions& options) {
  auto sm = std::unique_ptr<StateMachine>(new StateMachine());
  sm->options_ = options;
  // A crash in the middle of ReplaceFrom() leaves the previous store at dir.old.
  std::error_code ec;
  const std::string old_dir = options.dir + ".old";
  if (!std::filesystem::exists(options.dir, ec) && std::filesystem::exists(old_dir, ec)) {
    std::filesystem::rename(old_dir, options.dir, ec);
    if (ec) return Status(Code::kInternal, "recover " + old_dir + ": " + ec.message());
  }
  if (auto st = sm->OpenDb(); !st.ok()) return st;
  return sm;
}

Status StateMachine::OpenDb() {
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.max_background_jobs = 2;
  db_opts.keep_log_file_num = 4;
  // Memory must not grow with the queue's depth: one memtable budget for all
  // column families (a family's memtable is flushed when the sum reaches it),
  // and one block cache that also holds the SST index and filter blocks
  // (which otherwise stay on the heap, one set per file, as the store grows).
  db_opts.db_write_buffer_size = 64 << 20;
  // No RocksDB WAL: the Raft log is the write-ahead log. A crash loses the
  // memtables, i.e. the state after the last flush, whose applied index is in
  // the same flush (atomic across column families), and the Raft log still
  // holds every entry after it (a snapshot flushes before the log is
  // compacted), so replay restores the rest; Apply skips entries at or below
  // the applied index. Each message is written once less, without a write()
  // per apply.
  db_opts.atomic_flush = true;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(32 << 20);
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));

  rocksdb::ColumnFamilyOptions base;
  base.write_buffer_size = 32 << 20;
  base.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const char* name : kCfNames) {
    rocksdb::ColumnFamilyOptions o = base;
    if (std::string(name) == "msg") {
      // Bodies live in blob files: compaction moves keys, not message bytes.
      o.enable_blob_files = true;
      o.min_blob_size = 2048;
      o.enable_blob_garbage_collection = true;
    }
    cfs.emplace_back(name, o);
  }
  auto s = rocksdb::DB::Open(db_opts, options_.dir, cfs, &handles_, &db_);
  if (!s.ok()) return FromRocks(s, ("open queue store " + options_.dir).c_str());
  msg_ = handles_[1];
  rcpt_ = handles_[2];
  ready_ = handles_[3];
  sched_ = handles_[4];
  lease_ = handles_[5];
  stats_ = handles_[6];
  meta_ = handles_[7];
  host_ = handles_[8];

  std::lock_guard lock(mem_mu_);
  counts_ = QueueCounts{};
  ready_index_.clear();
  lease_index_.clear();
  members_.clear();
  policy_version_.clear();
  sched_floor_ = INT64_MIN;
  applied_ = 0;
  std::string v;
  s = db_->Get(rocksdb::ReadOptions(), meta_, kAppliedKey, &v);
  if (s.ok())
    applied_ = DecodeU64(v);
  else if (!s.IsNotFound())
    return FromRocks(s, "read applied index");
  s = db_->Get(rocksdb::ReadOptions(), meta_, kCountsKey, &v);
  if (s.ok()) {
    // messages, then one count per status (older stores have fewer statuses).
    for (size_t i = 0; i < 1 + counts_.by_status.size() && (i + 1) * 8 <= v.size(); ++i) {
      int64_t n = static_cast<int64_t>(DecodeU64(v.substr(i * 8, 8)));
      if (i == 0)
        counts_.messages = n;
      else
        counts_.by_status[i - 1] = n;
    }
  }
  // The one full scan of `ready` and `lease`; afterwards they are read from memory.
  for (auto [cf, index] : {std::pair{ready_, &ready_index_}, std::pair{lease_, &lease_index_}}) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      keys::Item item;
      if (keys::Decode(it->key().ToStringView(), &item)) index->insert(IndexKey{item.order, item.qid, item.index});
    }
    if (!it->status().ok()) return FromRocks(it->status(), "load queue index");
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  for (it->Seek(kMemberPrefix); it->Valid() && it->key().starts_with(kMemberPrefix); it->Next()) {
    uint64_t id = DecodeU64(it->key().ToString().substr(std::string_view(kMemberPrefix).size()));
    members_[id] = it->value().ToString();
  }
  if (auto st = FromRocks(it->status(), "load members"); !st.ok()) return st;
  std::string value;
  v1::PolicyBundle policy;
  if (db_->Get(rocksdb::ReadOptions(), meta_, kPolicyKey, &value).ok() && policy.ParseFromString(value)) {
    policy_version_ = policy.version();
  }
  return Status::Ok();
}

void StateMachine::CloseDb() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  handles_.clear();
  delete db_;
  db_ = nullptr;
}

StateMachine::~StateMachine() {
  if (db_) CloseDb();
}

uint64_t StateMachine::UnflushedBytes() const {
  uint64_t n = 0;
  if (!db_->GetAggregatedIntProperty(rocksdb::DB::Properties::kCurSizeAllMemTables, &n)) return 0;
  return n;
}

Result<std::vector<std::pair<std::string, uint64_t>>> StateMachine::CreateCheckpoint(const std::string& dir) const {
  std::shared_lock db_lock(db_mu_);
  rocksdb::Checkpoint* raw = nullptr;
  auto s = rocksdb::Checkpoint::Create(db_, &raw);
  if (!s.ok()) return FromRocks(s, "checkpoint");
  std::unique_ptr<rocksdb::Checkpoint> cp(raw);
  // log_size_for_flush 0: memtables are flushed, so the checkpoint needs no WAL replay.
  s = cp->CreateCheckpoint(dir, /*log_size_for_flush=*/0);
  if (!s.ok()) return FromRocks(s, ("checkpoint to " + dir).c_str());
  std::vector<std::pair<std::string, uint64_t>> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_regular_file()) files.emplace_back(e.path().filename().string(), e.file_size());
  }
  if (ec) return Status(Code::kInternal, "list checkpoint " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

Status StateMachine::ReplaceFrom(const std::string& checkpoint_dir) {
  std::unique_lock db_lock(db_mu_);
  const std::string old_dir = options_.dir + ".old";
  CloseDb();
  std::error_code ec;
  std::filesystem::remove_all(old_dir, ec);
  std::filesystem::rename(options_.dir, old_dir, ec);
  if (ec) return Status(Code::kInternal, "move aside " + options_.dir + ": " + ec.message());
  std::filesystem::rename(checkpoint_dir, options_.dir, ec);
  if (ec) {
    std::filesystem::rename(old_dir, options_.dir, ec);
    if (auto st = OpenDb(); !st.ok()) return st;
    return Status(Code::kInternal, "install checkpoint " + checkpoint_dir + ": " + ec.message());
  }
  if (auto st = OpenDb(); !st.ok()) return st;
  std::filesystem::remove_all(old_dir, ec);
  return Status::Ok();
}

uint64_t StateMachine::Digest() const {
  std::shared_lock db_lock(db_mu_);
  uint64_t h = 1469598103934665603ULL;  // FNV-1a
  auto mix = [&](rocksdb::Slice s) {
    for (size_t i = 0; i < s.size(); ++i) h = (h ^ static_cast<unsigned char>(s[i])) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;  // separator
  };
  for (auto* cf : handles_) {
    mix(cf->GetName());
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      mix(it->key());
      mix(it->value());
    }
  }
  return h;
}

std::string StateMachine::PolicyVersion() const {
  std::lock_guard lock(mem_mu_);
  return policy_version_;
}

std::map<uint64_t, std::string> StateMachine::Members() const {
  std::lock_guard lock(mem_mu_);
  return members_;
}

QueueCounts StateMachine::counts() const {
  std::lock_guard lock(mem_mu_);
  return counts_;
}

namespace {

// A queue run's or operator action's recipient filters (domain: lower-case).
bool RcptMatches(const v1::RunOp& f, const std::string& domain, const v1::Recipient& r) {
  if (!f.rcpt_substring().empty() && r.address().find(f.rcpt_substring()) == std::string::npos) return false;
  return domain.empty() || InDomain(DomainOf(r.address()), domain);
}

uint64_t Fnv1a(std::string_view s, uint64_t h = 1469598103934665603ULL) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

}  // namespace

int64_t StateMachine::SortKey(const v1::Envelope& env, const v1::Recipient& r, int64_t retry_factor) const {
  const int64_t priority = env.priority() + static_cast<int64_t>(r.attempts()) * retry_factor;
  switch (options_.sort_order) {
    case StateMachineOptions::SortOrder::kPriority: return priority;
    case StateMachineOptions::SortOrder::kTime: return env.arrival_unix_us();
    case StateMachineOptions::SortOrder::kRandom: {
      uint64_t h = Fnv1a(env.qid());
      h = Fnv1a(std::to_string(r.index()) + "/" + std::to_string(r.attempts()), h);
      return static_cast<int64_t>(h >> 1);
    }
    case StateMachineOptions::SortOrder::kHost: {
      // High 31 bits: the domain's hash (a group); low 32: priority, offset and clamped.
      const int64_t group = static_cast<int64_t>(Fnv1a(DomainOf(r.address())) & 0x7fffffffULL);
      const int64_t low = std::clamp<int64_t>(priority + (int64_t{1} << 31), 0, (int64_t{1} << 32) - 1);
      return (group << 32) | low;
    }
  }
  return priority;
}

Status StateMachine::Apply(uint64_t index, const std::vector<const v1::QueueCommand*>& commands,
                           std::vector<ApplyResult>* results) {
  results->assign(commands.size(), ApplyResult{});
  std::shared_lock db_lock(db_mu_);
  if (index <= applied_.load()) return Status::Ok();  // replayed entry: already applied
  Batch b(*this);
  ApplyContext ctx;
  {
    std::lock_guard lock(mem_mu_);
    ctx.counts = counts_;
    ctx.sched_floor = sched_floor_;
  }
  ctx.retry_factor = options_.retry_factor;
  bool stats_touched = false;
  std::vector<std::pair<uint64_t, std::string>> member_ops;  // "" = removed
  std::optional<std::string> policy_version;                 // a policy stored by this batch

  // Recipient transitions shared by the command handlers.
  auto clear_index = [&](const v1::Recipient& r, const std::string& qid) {
    if (r.status() == v1::RCPT_READY) {
      b.Delete(ready_, keys::Ready(r.ready_priority(), qid, r.index()));
      ctx.index_ops.push_back({&ready_index_, false, IndexKey{r.ready_priority(), qid, r.index()}});
    }
    if (r.status() == v1::RCPT_LEASED) {
      b.Delete(lease_, keys::Lease(r.lease_expiry_unix_us(), qid, r.index()));
      ctx.index_ops.push_back({&lease_index_, false, IndexKey{r.lease_expiry_unix_us(), qid, r.index()}});
    }
    if (r.status() == v1::RCPT_DEFERRED) b.Delete(sched_, keys::Sched(r.next_attempt_unix_us(), qid, r.index()));
  };
  auto make_ready = [&](v1::Recipient* r, const std::string& qid, int64_t priority) {
    ctx.Move(r->status(), v1::RCPT_READY);
    r->set_status(v1::RCPT_READY);
    r->set_ready_priority(priority);
    r->clear_lease_owner();
    r->clear_lease_expiry_unix_us();
    b.Put(ready_, keys::Ready(priority, qid, r->index()), "");
    ctx.index_ops.push_back({&ready_index_, true, IndexKey{priority, qid, r->index()}});
  };

  // Back to ready after a deferral or a lost lease: retried mail sorts after
  // fresh mail by attempts x RetryFactor. The caller cleared the old index entry.
  auto requeue = [&](v1::Recipient* r, const std::string& qid, ApplyResult* res) -> Status {
    v1::Envelope env;
    bool found = false;
    if (auto st = b.GetProto(msg_, qid, &env, &found); !st.ok()) return st;
    make_ready(r, qid, SortKey(env, *r, ctx.retry_factor));
    b.PutProto(rcpt_, keys::Rcpt(qid, r->index()), *r);
    ++res->made_ready;
    return Status::Ok();
  };

  auto enqueue = [&](const v1::NewMessage& m, int64_t now, ApplyResult* res) -> Status {
    const auto& qid = m.envelope().qid();
    std::string existing;
    bool found = false;
    if (auto st = b.Get(msg_, qid, &existing, &found); !st.ok()) return st;
    if (found) {
      res->status = Status(Code::kAlreadyExists, "queue id " + qid + " exists");
      return Status::Ok();
    }
    v1::Envelope env = m.envelope();
    env.set_nrcpts(m.recipients_size());
    env.set_pending(m.recipients_size());
    if (env.arrival_unix_us() == 0) env.set_arrival_unix_us(now);
    env.set_priority(static_cast<int64_t>(env.size()) - env.precedence_class() * options_.class_factor +
                     static_cast<int64_t>(m.recipients_size()) * options_.recipient_factor);
    b.PutProto(msg_, qid, env);
    b.Put(msg_, keys::Body(qid), m.body());
    ++ctx.counts.messages;
    for (int i = 0; i < m.recipients_size(); ++i) {
      v1::Recipient r = m.recipients(i);
      r.set_index(i);
      r.set_status(v1::RCPT_STATUS_UNSPECIFIED);
      if (env.queue_only()) {  // QueueLA: deferred until the next queue run
        const int64_t next = env.arrival_unix_us() + options_.queue_only_delay_us;
        ctx.Move(v1::RCPT_STATUS_UNSPECIFIED, v1::RCPT_DEFERRED);
        r.set_status(v1::RCPT_DEFERRED);
        r.set_next_attempt_unix_us(next);
        r.set_last_reply("queued only: system load above QueueLA");
        b.Put(sched_, keys::Sched(next, qid, i), "");
        ctx.sched_floor = std::min(ctx.sched_floor, next);
      } else {
        make_ready(&r, qid, SortKey(env, r, ctx.retry_factor));
        ++res->made_ready;
      }
      b.PutProto(rcpt_, keys::Rcpt(qid, i), r);
    }
    auto& st = ctx.Stats(env.mailer_from());
    st.set_msgsfr(st.msgsfr() + 1);
    st.set_bytes_from(st.bytes_from() + env.size());
    stats_touched = true;
    return Status::Ok();
  };

  auto lease = [&](const v1::LeaseOp& op, ApplyResult* res) -> Status {
    for (const auto& item : op.items()) {
      v1::Recipient r;
      bool found = false;
      auto key = keys::Rcpt(item.qid(), item.index());
      if (auto st = b.GetProto(rcpt_, key, &r, &found); !st.ok()) return st;
      if (!found || r.status() != v1::RCPT_READY) continue;  // taken or finished meanwhile
      clear_index(r, item.qid());
      ctx.Move(r.status(), v1::RCPT_LEASED);
      r.set_status(v1::RCPT_LEASED);
      r.set_lease_owner(op.worker());
      r.set_lease_expiry_unix_us(op.expiry_unix_us());
      b.PutProto(rcpt_, key, r);
      b.Put(lease_, keys::Lease(op.expiry_unix_us(), item.qid(), item.index()), "");
      ctx.index_ops.push_back({&lease_index_, true, IndexKey{op.expiry_unix_us(), item.qid(), item.index()}});
      res->leased.push_back(item);
      res->leased_rcpts.push_back(std::move(r));
    }
    return Status::Ok();
  };

  auto ack = [&](const v1::AckOp& op, int64_t now, ApplyResult* res) -> Status {
    std::map<std::string, v1::Envelope> envs;  // touched envelopes, written once
    for (const auto& result : op.results()) {
      const auto& qid = result.qid();
      auto it = envs.find(qid);
      if (it == envs.end()) {
        v1::Envelope env;
        bool found = false;
        if (auto st = b.GetProto(msg_, qid, &env, &found); !st.ok()) return st;
        if (!found) continue;  // already finished and removed
        it = envs.emplace(qid, std::move(env)).first;
      }
      v1::Envelope& env = it->second;
      v1::Recipient r;
      bool found = false;
      auto key = keys::Rcpt(qid, result.index());
      if (auto st = b.GetProto(rcpt_, key, &r, &found); !st.ok()) return st;
      if (!found || IsFinal(r.status())) continue;  // duplicate ack
      clear_index(r, qid);
      r.set_last_attempt_unix_us(now);
      r.set_last_reply(result.reply());
      if (result.delay_warned()) r.set_delay_warned(true);
      r.clear_lease_owner();
      r.clear_lease_expiry_unix_us();
      switch (result.outcome()) {
        case v1::OUTCOME_DELIVERED:
        case v1::OUTCOME_BOUNCED: {
          auto to = result.outcome() == v1::OUTCOME_DELIVERED ? v1::RCPT_DELIVERED : v1::RCPT_BOUNCED;
          ctx.Move(r.status(), to);
          r.set_status(to);
          env.set_pending(env.pending() > 0 ? env.pending() - 1 : 0);
          if (to == v1::RCPT_DELIVERED) {
            auto& st = ctx.Stats(result.mailer());
            st.set_msgsto(st.msgsto() + 1);
            st.set_bytes_to(st.bytes_to() + result.bytes());
            stats_touched = true;
          }
          break;
        }
        case v1::OUTCOME_DEFERRED:
        default: {
          ctx.Move(r.status(), v1::RCPT_DEFERRED);
          r.set_status(v1::RCPT_DEFERRED);
          if (!result.throttled()) r.set_attempts(r.attempts() + 1);  // a delivery limit is not a failure
          int64_t next = result.next_attempt_unix_us() > now ? result.next_attempt_unix_us() : now;
          r.set_next_attempt_unix_us(next);
          b.Put(sched_, keys::Sched(next, qid, r.index()), "");
          ctx.sched_floor = std::min(ctx.sched_floor, next);  // a (new) leader's clock may lag
          break;
        }
      }
      b.PutProto(rcpt_, key, r);
    }
    for (auto& [qid, env] : envs) {
      if (env.pending() > 0) {
        b.PutProto(msg_, qid, env);
        continue;
      }
      // Every recipient is final: the message leaves the queue.
      for (uint32_t i = 0; i < env.nrcpts(); ++i) {
        v1::Recipient r;
        bool found = false;
        auto key = keys::Rcpt(qid, i);
        if (auto st = b.GetProto(rcpt_, key, &r, &found); !st.ok()) return st;
        if (found) {
          ctx.Move(r.status(), v1::RCPT_STATUS_UNSPECIFIED);
          b.Delete(rcpt_, key);
        }
      }
      b.Delete(msg_, qid);
      b.Delete(msg_, keys::Body(qid));
      --ctx.counts.messages;
    }
    // PersistentHostStatus: the last attempt per MX host, cluster-wide.
    for (const auto& h : op.hosts()) {
      if (h.host().empty()) continue;
      const std::string key = ToLower(h.host());
      v1::HostStatus hs;
      bool have = false;
      if (auto st = b.GetProto(host_, key, &hs, &have); !st.ok()) return st;
      hs.set_host(key);
      hs.set_last_attempt_unix_us(now);
      hs.set_last_reply(h.reply());
      if (h.ok()) {
        hs.set_consecutive_failures(0);
        hs.set_last_success_unix_us(now);
      } else {
        hs.set_consecutive_failures(hs.consecutive_failures() + 1);
      }
      b.PutProto(host_, key, hs);
    }
    for (const auto& dsn : op.dsns()) {
      ApplyResult ignored;
      if (auto st = enqueue(dsn, now, &ignored); !st.ok()) return st;
      res->made_ready += ignored.made_ready;
    }
    return Status::Ok();
  };

  auto tick = [&](const v1::TickOp& op, int64_t now, ApplyResult* res) -> Status {
    const uint32_t limit = op.max_items() ? op.max_items() : 10000;
    // Due deferrals, from disk, starting at the floor (everything below is consumed).
    std::vector<keys::Item> due;
    bool more = false;
    {
      auto it = b.Iterator(sched_);
      for (it->Seek(keys::Sched(ctx.sched_floor)); it->Valid(); it->Next()) {
        keys::Item item;
        if (!keys::Decode(it->key().ToStringView(), &item)) continue;
        if (item.order > now) break;
        if (due.size() >= limit) {
          more = true;
          break;
        }
        due.push_back(std::move(item));
      }
      if (auto s = it->status(); !s.ok()) return FromRocks(s, "scan sched");
    }
    // Everything before now is consumed unless the limit cut the scan short.
    ctx.sched_floor = more ? due.back().order : now;
    for (const auto& item : due) b.Delete(sched_, keys::Sched(item.order, item.qid, item.index));
    // Expired leases, from the in-memory mirror (validated against the record).
    {
      std::lock_guard lock(mem_mu_);
      for (const auto& k : lease_index_) {
        if (k.order > now || due.size() >= 2 * static_cast<size_t>(limit)) break;
        due.push_back(keys::Item{k.order, k.qid, k.index});
      }
    }
    for (const auto& item : due) {
      v1::Recipient r;
      bool found = false;
      auto key = keys::Rcpt(item.qid, item.index);
      if (auto st = b.GetProto(rcpt_, key, &r, &found); !st.ok()) return st;
      if (!found) continue;
      bool expired_lease =
          r.status() == v1::RCPT_LEASED && r.lease_expiry_unix_us() == item.order && r.lease_expiry_unix_us() <= now;
      bool retry_due =
          r.status() == v1::RCPT_DEFERRED && r.next_attempt_unix_us() == item.order && r.next_attempt_unix_us() <= now;
      if (!expired_lease && !retry_due) continue;
      if (expired_lease) clear_index(r, item.qid);
      if (auto st = requeue(&r, item.qid, res); !st.ok()) return st;
    }
    return Status::Ok();
  };

  // A queue run: every deferred recipient (the sched index) is checked
  // against the filters; O(deferred), like sendmail's -qR.
  auto run = [&](const v1::RunOp& op, ApplyResult* res) -> Status {
    const std::string domain = ToLower(op.domain());
    std::vector<keys::Item> deferred;
    {
      auto it = b.Iterator(sched_);
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        keys::Item item;
        if (keys::Decode(it->key().ToStringView(), &item)) deferred.push_back(std::move(item));
      }
      if (auto s = it->status(); !s.ok()) return FromRocks(s, "scan sched");
    }
    for (const auto& item : deferred) {
      if (!op.qid_substring().empty() && item.qid.find(op.qid_substring()) == std::string::npos) continue;
      v1::Recipient r;
      bool found = false;
      if (auto st = b.GetProto(rcpt_, keys::Rcpt(item.qid, item.index), &r, &found); !st.ok()) return st;
      if (!found || r.status() != v1::RCPT_DEFERRED || r.next_attempt_unix_us() != item.order) continue;
      if (!RcptMatches(op, domain, r)) continue;
      if (!op.sender_substring().empty()) {
        v1::Envelope env;
        bool have = false;
        if (auto st = b.GetProto(msg_, item.qid, &env, &have); !st.ok()) return st;
        if (!have || env.sender().find(op.sender_substring()) == std::string::npos) continue;
      }
      clear_index(r, item.qid);
      if (auto st = requeue(&r, item.qid, res); !st.ok()) return st;
    }
    return Status::Ok();
  };

  // Operator actions by filter: a scan of every message, like the List behind mailq.
  auto manage = [&](const v1::ManageOp& op, ApplyResult* res) -> Status {
    const auto& f = op.filter();
    const std::string domain = ToLower(f.domain());
    auto rcpt_matches = [&](const v1::Recipient& r) { return RcptMatches(f, domain, r); };
    std::vector<std::pair<std::string, v1::Envelope>> messages;
    {
      auto it = b.Iterator(msg_);
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        auto key = it->key().ToStringView();
        if (keys::IsBodyKey(key)) continue;
        if (!f.qid_substring().empty() && key.find(f.qid_substring()) == std::string_view::npos) continue;
        v1::Envelope env;
        if (!env.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
        if (!f.sender_substring().empty() && env.sender().find(f.sender_substring()) == std::string::npos) continue;
        messages.emplace_back(std::string(key), std::move(env));
      }
      if (auto s = it->status(); !s.ok()) return FromRocks(s, "scan msg");
    }
    for (auto& [qid, env] : messages) {
      std::vector<v1::Recipient> rcpts(env.nrcpts());
      std::vector<bool> present(env.nrcpts(), false);
      bool any_match = false, leased = false;
      for (uint32_t i = 0; i < env.nrcpts(); ++i) {
        bool found = false;
        if (auto st = b.GetProto(rcpt_, keys::Rcpt(qid, i), &rcpts[i], &found); !st.ok()) return st;
        present[i] = found;
        if (!found || IsFinal(rcpts[i].status())) continue;
        any_match = any_match || rcpt_matches(rcpts[i]);
        leased = leased || rcpts[i].status() == v1::RCPT_LEASED;
      }
      if (!any_match) continue;
      switch (op.action()) {
        case v1::ManageOp::MANAGE_HOLD:
        case v1::ManageOp::MANAGE_RELEASE:
          for (uint32_t i = 0; i < env.nrcpts(); ++i) {
            auto& r = rcpts[i];
            if (!present[i] || !rcpt_matches(r)) continue;
            if (op.action() == v1::ManageOp::MANAGE_HOLD &&
                (r.status() == v1::RCPT_READY || r.status() == v1::RCPT_DEFERRED)) {
              clear_index(r, qid);
              ctx.Move(r.status(), v1::RCPT_HELD);
              r.set_status(v1::RCPT_HELD);
              b.PutProto(rcpt_, keys::Rcpt(qid, i), r);
              ++res->recipients;
            } else if (op.action() == v1::ManageOp::MANAGE_RELEASE && r.status() == v1::RCPT_HELD) {
              if (auto st = requeue(&r, qid, res); !st.ok()) return st;
              ++res->recipients;
            }
          }
          break;
        case v1::ManageOp::MANAGE_DELETE:
          if (leased) {  // a worker is delivering it: deleting now could not stop that
            ++res->skipped;
            break;
          }
          for (uint32_t i = 0; i < env.nrcpts(); ++i) {
            if (!present[i]) continue;
            if (!IsFinal(rcpts[i].status())) {
              clear_index(rcpts[i], qid);
              ctx.Move(rcpts[i].status(), v1::RCPT_STATUS_UNSPECIFIED);
              ++res->recipients;
            }
            b.Delete(rcpt_, keys::Rcpt(qid, i));
          }
          b.Delete(msg_, qid);
          b.Delete(msg_, keys::Body(qid));
          --ctx.counts.messages;
          ++res->messages;
          break;
        case v1::ManageOp::MANAGE_BOUNCE:
          // Marked, and made ready: the next delivery returns it with a DSN,
          // which only a worker can write. Recipients in delivery are left alone.
          for (uint32_t i = 0; i < env.nrcpts(); ++i) {
            auto& r = rcpts[i];
            if (!present[i] || !rcpt_matches(r) || IsFinal(r.status())) continue;
            if (r.status() == v1::RCPT_LEASED) {
              ++res->skipped;
              continue;
            }
            r.set_operator_bounce(true);
            if (r.status() == v1::RCPT_READY) {
              b.PutProto(rcpt_, keys::Rcpt(qid, i), r);
            } else {
              clear_index(r, qid);
              if (auto st = requeue(&r, qid, res); !st.ok()) return st;
            }
            ++res->recipients;
          }
          break;
        default: return Status(Code::kInvalidArgument, "unknown manage action");
      }
    }
    return Status::Ok();
  };

  auto release = [&](const v1::ReleaseOp& op, ApplyResult* res) -> Status {
    std::vector<v1::RcptRef> candidates(op.items().begin(), op.items().end());
    if (!op.owner_prefix().empty()) {
      std::lock_guard lock(mem_mu_);
      for (const auto& k : lease_index_) {  // bounded by leases in flight
        v1::RcptRef ref;
        ref.set_qid(k.qid);
        ref.set_index(k.index);
        candidates.push_back(std::move(ref));
      }
    }
    for (const auto& c : candidates) {
      v1::Recipient r;
      bool found = false;
      if (auto st = b.GetProto(rcpt_, keys::Rcpt(c.qid(), c.index()), &r, &found); !st.ok()) return st;
      if (!found || r.status() != v1::RCPT_LEASED) continue;
      bool by_owner = !op.owner_prefix().empty() && r.lease_owner() != op.keep_owner() &&
                      r.lease_owner().rfind(op.owner_prefix(), 0) == 0;
      bool by_item = std::any_of(op.items().begin(), op.items().end(),
                                 [&](const v1::RcptRef& i) { return i.qid() == c.qid() && i.index() == c.index(); });
      if (!by_owner && !by_item) continue;
      clear_index(r, c.qid());
      if (auto st = requeue(&r, c.qid(), res); !st.ok()) return st;
    }
    return Status::Ok();
  };

  for (size_t i = 0; i < commands.size(); ++i) {
    const auto& cmd = *commands[i];
    auto* res = &(*results)[i];
    Status st;
    switch (cmd.op_case()) {
      case v1::QueueCommand::kEnqueue: st = enqueue(cmd.enqueue().message(), cmd.now_unix_us(), res); break;
      case v1::QueueCommand::kLease: st = lease(cmd.lease(), res); break;
      case v1::QueueCommand::kAck: st = ack(cmd.ack(), cmd.now_unix_us(), res); break;
      case v1::QueueCommand::kTick: st = tick(cmd.tick(), cmd.now_unix_us(), res); break;
      case v1::QueueCommand::kRelease: st = release(cmd.release(), res); break;
      case v1::QueueCommand::kRun: st = run(cmd.run(), res); break;
      case v1::QueueCommand::kManage: st = manage(cmd.manage(), res); break;
      case v1::QueueCommand::kPurgeHosts: {
        std::vector<std::string> keys;
        if (!cmd.purge_hosts().host().empty()) {
          keys.push_back(ToLower(cmd.purge_hosts().host()));
        } else {
          auto it = b.Iterator(host_);
          for (it->SeekToFirst(); it->Valid(); it->Next()) keys.push_back(it->key().ToString());
        }
        for (const auto& k : keys) {
          std::string v;
          bool have = false;
          if (st = b.Get(host_, k, &v, &have); !st.ok()) break;
          if (!have) continue;
          b.Delete(host_, k);
          ++res->purged;
        }
        break;
      }
      case v1::QueueCommand::kStats:
        if (cmd.stats().reset()) {
          // Counted so far (in the store and earlier in this batch) is gone.
          ctx.stats.clear();
          std::vector<std::string> mailers;
          auto it = b.Iterator(stats_);
          for (it->SeekToFirst(); it->Valid(); it->Next()) mailers.push_back(it->key().ToString());
          for (const auto& m : mailers) b.Delete(stats_, m);
          b.Put(meta_, kStatsSinceKey, EncodeU64(cmd.now_unix_us()));
        }
        for (const auto& d : cmd.stats().deltas()) AddStats(&ctx.Stats(d.mailer()), d);
        stats_touched = true;
        break;
      case v1::QueueCommand::kMember: {
        const auto& m = cmd.member();
        std::string key = kMemberPrefix + EncodeU64(m.node_id());
        if (m.removed())
          b.Delete(meta_, key);
        else
          b.Put(meta_, key, m.grpc_address());
        member_ops.emplace_back(m.node_id(), m.removed() ? "" : m.grpc_address());
        break;
      }
      case v1::QueueCommand::kNode: {
        const auto& op = cmd.node();
        const std::string key = kNodePrefix + op.info().name();
        v1::NodeInfo cur;
        bool found = false;
        st = b.GetProto(meta_, key, &cur, &found);
        if (!st.ok()) break;
        switch (op.kind()) {
          case v1::NodeOp::NODE_HEARTBEAT: {
            const bool drain = found && cur.drain();
            cur = op.info();
            cur.set_drain(drain);
            cur.set_last_seen_unix_us(cmd.now_unix_us());
            b.PutProto(meta_, key, cur);
            break;
          }
          case v1::NodeOp::NODE_DRAIN:
          case v1::NodeOp::NODE_UNDRAIN:
            if (!found) {
              res->status =
                  Status(Code::kNotFound, "no node '" + op.info().name() + "' (mxctl cluster status lists them)");
              break;
            }
            cur.set_drain(op.kind() == v1::NodeOp::NODE_DRAIN);
            b.PutProto(meta_, key, cur);
            break;
          case v1::NodeOp::NODE_FORGET:
            if (!found) res->status = Status(Code::kNotFound, "no node '" + op.info().name() + "'");
            b.Delete(meta_, key);
            break;
          default: res->status = Status(Code::kInvalidArgument, "unknown node op"); break;
        }
        break;
      }
      case v1::QueueCommand::kPolicy: {
        v1::PolicyBundle bundle = cmd.policy();
        bundle.set_applied_unix_us(cmd.now_unix_us());
        b.PutProto(meta_, kPolicyKey, bundle);
        policy_version = bundle.version();
        break;
      }
      case v1::QueueCommand::kSite: {
        const auto& op = cmd.site();
        if (op.status().site().empty()) {
          res->status = Status(Code::kInvalidArgument, "a site status needs a site");
          break;
        }
        const std::string key = kSitePrefix + op.status().site();
        if (op.clear()) {
          b.Delete(meta_, key);
        } else {
          v1::SiteStatus status = op.status();
          status.set_since_unix_us(cmd.now_unix_us());
          b.PutProto(meta_, key, status);
        }
        break;
      }
      case v1::QueueCommand::kSuppress: {
        // Every change gets the next sequence number; an address keeps only
        // its latest change in the log, so followers read each address once.
        std::string v;
        bool found = false;
        if (st = b.Get(meta_, kSuppLastKey, &v, &found); !st.ok()) break;
        uint64_t seq = found ? DecodeU64(v) : 0;
        if (st = b.Get(meta_, kSuppTotalKey, &v, &found); !st.ok()) break;
        int64_t total = found ? static_cast<int64_t>(DecodeU64(v)) : 0;
        auto change = [&](v1::Suppression entry) -> Status {
          const std::string key = kSuppPrefix + entry.address();
          v1::Suppression old;
          bool had = false;
          if (auto gs = b.GetProto(meta_, key, &old, &had); !gs.ok()) return gs;
          const bool was_on = had && !old.removed();
          if (entry.removed()) {
            if (!was_on) return Status::Ok();  // nothing to remove
            --total;
            ++res->unsuppressed;
          } else {
            if (was_on) return Status::Ok();  // already on the list: keep its first reason
            ++total;
            ++res->suppressed;
          }
          if (had) b.Delete(meta_, kSuppSeqPrefix + EncodeU64(old.seq()));
          entry.set_seq(++seq);
          entry.set_added_unix_us(cmd.now_unix_us());
          b.PutProto(meta_, key, entry);
          b.PutProto(meta_, kSuppSeqPrefix + EncodeU64(seq), entry);
          return Status::Ok();
        };
        for (const auto& a : cmd.suppress().add()) {
          if (a.address().empty()) continue;
          v1::Suppression e = a;
          e.set_removed(false);
          if (st = change(std::move(e)); !st.ok()) break;
        }
        for (const auto& addr : cmd.suppress().remove()) {
          if (!st.ok() || addr.empty()) continue;
          v1::Suppression e;
          e.set_address(addr);
          e.set_removed(true);
          st = change(std::move(e));
        }
        if (!st.ok()) break;
        b.Put(meta_, kSuppLastKey, EncodeU64(seq));
        b.Put(meta_, kSuppTotalKey, EncodeU64(static_cast<uint64_t>(std::max<int64_t>(0, total))));
        break;
      }
      default: res->status = Status(Code::kInvalidArgument, "empty queue command"); break;
    }
    if (!st.ok()) return st;  // storage failure: nothing written
  }

  if (stats_touched) {
    for (auto& [mailer, delta] : ctx.stats) {
      v1::MailerStats cur;
      bool found = false;
      if (auto st = b.GetProto(stats_, mailer, &cur, &found); !st.ok()) return st;
      cur.set_mailer(mailer);
      AddStats(&cur, delta);
      b.PutProto(stats_, mailer, cur);
    }
    std::string since;
    bool found = false;
    if (auto st = b.Get(meta_, kStatsSinceKey, &since, &found); !st.ok()) return st;
    if (!found && !commands.empty()) b.Put(meta_, kStatsSinceKey, EncodeU64(commands.front()->now_unix_us()));
  }
  std::string counts_blob = EncodeU64(static_cast<uint64_t>(ctx.counts.messages));
  for (auto n : ctx.counts.by_status) counts_blob += EncodeU64(static_cast<uint64_t>(n));
  b.Put(meta_, kCountsKey, counts_blob);
  b.Put(meta_, kAppliedKey, EncodeU64(index));

  rocksdb::WriteOptions wo;
  // The Raft log is the durable record and is replayed after a crash (the
  // applied index written in this batch makes that safe): see OpenDb.
  wo.disableWAL = true;
  auto s = db_->Write(wo, b.write_batch());
  if (!s.ok() && s.IsIOError()) {
    // A failed flush (the disk filled up) stops RocksDB's writes until
    // Resume(), which flushes again: once space is back the entry applies
    // (libraft retries it) and the shard goes on by itself.
    if (auto r = db_->Resume(); r.ok()) {
      log::Info("queue store resumed after: " + s.ToString());
      s = db_->Write(wo, b.write_batch());
    }
  }
  if (!s.ok()) return FromRocks(s, "queue write");
  applied_ = index;
  {
    std::lock_guard lock(mem_mu_);
    for (auto& [id, address] : member_ops) {
      if (address.empty())
        members_.erase(id);
      else
        members_[id] = address;
    }
    if (policy_version) policy_version_ = *policy_version;
    counts_ = ctx.counts;
    sched_floor_ = ctx.sched_floor;
    for (auto& op : ctx.index_ops) {
      if (op.add)
        op.index->insert(std::move(op.key));
      else
        op.index->erase(op.key);
    }
  }
  return Status::Ok();
}

std::vector<v1::RcptRef> StateMachine::ReadyItems(size_t max_items) const {
  std::vector<v1::RcptRef> out;
  std::lock_guard lock(mem_mu_);
  for (const auto& k : ready_index_) {
    if (out.size() >= max_items) break;
    v1::RcptRef ref;
    ref.set_qid(k.qid);
    ref.set_index(k.index);
    out.push_back(std::move(ref));
  }
  return out;
}

int64_t StateMachine::EarliestScheduled() const {
  int64_t earliest = INT64_MAX, floor;
  {
    std::lock_guard lock(mem_mu_);
    if (!lease_index_.empty()) earliest = lease_index_.begin()->order;
    floor = sched_floor_;
  }
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), sched_));
  it->Seek(keys::Sched(floor));
  keys::Item item;
  if (it->Valid() && keys::Decode(it->key().ToStringView(), &item)) earliest = std::min(earliest, item.order);
  return earliest;
}

int64_t StateMachine::OldestArrival() const {
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), msg_));
  it->SeekToFirst();
  if (!it->Valid()) return 0;
  auto key = it->key().ToString();
  auto slash = key.find('/');
  return QidGenerator::TimeOf(slash == std::string::npos ? key : key.substr(0, slash));
}

Result<v1::Envelope> StateMachine::GetEnvelope(const std::string& qid) const {
  std::shared_lock db_lock(db_mu_);
  std::string v;
  auto s = db_->Get(rocksdb::ReadOptions(), msg_, qid, &v);
  if (s.IsNotFound()) return Status(Code::kNotFound, "no message " + qid);
  if (!s.ok()) return FromRocks(s, "read envelope");
  v1::Envelope env;
  if (!env.ParseFromString(v)) return Status(Code::kDataLoss, "corrupt envelope " + qid);
  return env;
}

Result<std::string> StateMachine::GetBody(const std::string& qid) const {
  std::shared_lock db_lock(db_mu_);
  std::string v;
  auto s = db_->Get(rocksdb::ReadOptions(), msg_, keys::Body(qid), &v);
  if (s.IsNotFound()) return Status(Code::kNotFound, "no body for " + qid);
  if (!s.ok()) return FromRocks(s, "read body");
  return v;
}

Result<v1::Recipient> StateMachine::GetRecipient(const std::string& qid, uint32_t index) const {
  std::shared_lock db_lock(db_mu_);
  return GetRecipientUnlocked(qid, index);
}

Result<v1::Recipient> StateMachine::GetRecipientUnlocked(const std::string& qid, uint32_t index) const {
  std::string v;
  auto s = db_->Get(rocksdb::ReadOptions(), rcpt_, keys::Rcpt(qid, index), &v);
  if (s.IsNotFound()) return Status(Code::kNotFound, "no recipient " + qid);
  if (!s.ok()) return FromRocks(s, "read recipient");
  v1::Recipient r;
  if (!r.ParseFromString(v)) return Status(Code::kDataLoss, "corrupt recipient " + qid);
  return r;
}

std::vector<v1::Recipient> StateMachine::GetRecipients(const std::string& qid, uint32_t nrcpts) const {
  std::shared_lock db_lock(db_mu_);
  return GetRecipientsUnlocked(qid, nrcpts);
}

std::vector<v1::Recipient> StateMachine::GetRecipientsUnlocked(const std::string& qid, uint32_t nrcpts) const {
  std::vector<v1::Recipient> out;
  for (uint32_t i = 0; i < nrcpts; ++i) {
    auto r = GetRecipientUnlocked(qid, i);
    if (r.ok()) out.push_back(std::move(r).value());
  }
  return out;
}

void StateMachine::List(const v1::ListRequest& filter, v1::ListResponse* out) const {
  std::shared_lock db_lock(db_mu_);
  uint32_t limit = filter.limit() ? filter.limit() : 1000;
  uint64_t matched = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), msg_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto key = it->key().ToStringView();
    if (keys::IsBodyKey(key)) continue;
    std::string qid(key);
    if (!filter.qid().empty() && qid.find(filter.qid()) == std::string::npos) continue;
    v1::Envelope env;
    if (!env.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
    if (!filter.sender().empty() && env.sender().find(filter.sender()) == std::string::npos) continue;
    auto rcpts = GetRecipientsUnlocked(qid, env.nrcpts());
    if (!filter.recipient().empty()) {
      bool any = false;
      for (const auto& r : rcpts) any = any || r.address().find(filter.recipient()) != std::string::npos;
      if (!any) continue;
    }
    ++matched;
    if (static_cast<uint32_t>(out->messages_size()) >= limit) continue;
    auto* m = out->add_messages();
    *m->mutable_envelope() = std::move(env);
    for (auto& r : rcpts) {
      if (!IsFinal(r.status())) *m->add_recipients() = std::move(r);
    }
  }
  out->set_matched(matched);
}

void StateMachine::Stats(v1::GetStatsResponse* out) const {
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), stats_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    v1::MailerStats s;
    if (s.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) *out->add_mailers() = s;
  }
  std::string v;
  if (db_->Get(rocksdb::ReadOptions(), meta_, kStatsSinceKey, &v).ok()) {
    out->set_since_unix_us(static_cast<int64_t>(DecodeU64(v)));
  }
}

void StateMachine::Nodes(v1::ListNodesResponse* out) const {
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  for (it->Seek(kNodePrefix); it->Valid() && it->key().starts_with(kNodePrefix); it->Next()) {
    v1::NodeInfo n;
    if (n.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) *out->add_nodes() = std::move(n);
  }
}

void StateMachine::Sites(int64_t now_us, v1::ListSiteStatusResponse* out) const {
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  for (it->Seek(kSitePrefix); it->Valid() && it->key().starts_with(kSitePrefix); it->Next()) {
    v1::SiteStatus s;
    if (s.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())) && s.until_unix_us() > now_us) {
      *out->add_sites() = std::move(s);
    }
  }
}

void StateMachine::Suppressions(const v1::ListSuppressionsRequest& req, v1::ListSuppressionsResponse* out) const {
  std::shared_lock db_lock(db_mu_);
  std::string value;
  if (db_->Get(rocksdb::ReadOptions(), meta_, kSuppLastKey, &value).ok()) out->set_last_seq(DecodeU64(value));
  if (db_->Get(rocksdb::ReadOptions(), meta_, kSuppTotalKey, &value).ok()) out->set_total(DecodeU64(value));
  if (!req.address().empty()) {
    v1::Suppression e;
    if (db_->Get(rocksdb::ReadOptions(), meta_, kSuppPrefix + req.address(), &value).ok() && e.ParseFromString(value) &&
        !e.removed()) {
      *out->add_entries() = std::move(e);
    }
    return;
  }
  const uint32_t limit = req.limit() == 0 || req.limit() > 10000 ? 10000 : req.limit();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  const std::string start = kSuppSeqPrefix + EncodeU64(req.after_seq() + 1);
  for (it->Seek(start);
       it->Valid() && it->key().starts_with(kSuppSeqPrefix) && static_cast<uint32_t>(out->entries_size()) < limit;
       it->Next()) {
    v1::Suppression e;
    if (e.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) *out->add_entries() = std::move(e);
  }
}

v1::PolicyBundle StateMachine::CurrentPolicy() const {
  std::shared_lock db_lock(db_mu_);
  std::string value;
  v1::PolicyBundle b;
  if (db_->Get(rocksdb::ReadOptions(), meta_, kPolicyKey, &value).ok()) b.ParseFromString(value);
  return b;
}

bool StateMachine::NodeDrain(const std::string& name) const {
  std::shared_lock db_lock(db_mu_);
  std::string value;
  if (!db_->Get(rocksdb::ReadOptions(), meta_, kNodePrefix + name, &value).ok()) return false;
  v1::NodeInfo n;
  return n.ParseFromString(value) && n.drain();
}

void StateMachine::HostStatuses(v1::ListHostStatusResponse* out) const {
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), host_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    v1::HostStatus h;
    if (h.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) *out->add_hosts() = std::move(h);
  }
}

}  // namespace mx::queue
