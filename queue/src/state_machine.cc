// state_machine.cc — opening the queue store, Apply's dispatch and commit,
// checkpoints, and the reads of committed state. The command handlers are
// in apply_data.cc, apply_admin.cc and apply_meta.cc (see apply.h).
#include "state_machine.h"

#include <rocksdb/cache.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>

#include "apply.h"
#include "keys.h"
#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/qid.h"

namespace mx::queue {
namespace {

constexpr const char* kCfNames[] = {"default", "msg", "rcpt", "ready", "sched", "lease", "stats", "meta", "host"};

}  // namespace

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

void AddStats(v1::MailerStats* into, const v1::MailerStats& d) {
  into->set_msgsfr(into->msgsfr() + d.msgsfr());
  into->set_bytes_from(into->bytes_from() + d.bytes_from());
  into->set_msgsto(into->msgsto() + d.msgsto());
  into->set_bytes_to(into->bytes_to() + d.bytes_to());
  into->set_msgsrej(into->msgsrej() + d.msgsrej());
  into->set_msgsdis(into->msgsdis() + d.msgsdis());
}

Status StateMachine::Batch::Get(rocksdb::ColumnFamilyHandle* cf, const std::string& key, std::string* value,
                                bool* found) {
  auto s = wb_.GetFromBatchAndDB(sm_.db_, rocksdb::ReadOptions(), cf, key, value);
  *found = s.ok();
  if (s.ok() || s.IsNotFound()) return Status::Ok();
  return FromRocks(s, "read");
}

std::unique_ptr<rocksdb::Iterator> StateMachine::Batch::Iterator(rocksdb::ColumnFamilyHandle* cf) {
  return std::unique_ptr<rocksdb::Iterator>(
      wb_.NewIteratorWithBase(cf, sm_.db_->NewIterator(rocksdb::ReadOptions(), cf)));
}

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
  preferred_leader_ = 0;
  sched_floor_ = INT64_MIN;
  oldest_hint_.clear();
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
  if (db_->Get(rocksdb::ReadOptions(), meta_, kPreferredLeaderKey, &value).ok()) preferred_leader_ = DecodeU64(value);
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

uint64_t StateMachine::PreferredLeader() const {
  std::lock_guard lock(mem_mu_);
  return preferred_leader_;
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
  Applier applier(*this);
  for (size_t i = 0; i < commands.size(); ++i) {
    if (auto st = applier.Dispatch(*commands[i], &(*results)[i]); !st.ok()) return st;  // nothing written
  }
  return applier.Commit(index, commands.empty() ? 0 : commands.front()->now_unix_us());
}

StateMachine::Applier::Applier(StateMachine& sm) : sm_(sm), b_(sm) {
  std::lock_guard lock(sm.mem_mu_);
  ctx_.counts = sm.counts_;
  ctx_.sched_floor = sm.sched_floor_;
}

Status StateMachine::Applier::Dispatch(const v1::QueueCommand& cmd, ApplyResult* res) {
  const int64_t now = cmd.now_unix_us();
  switch (cmd.op_case()) {
    // The data path (apply_data.cc).
    case v1::QueueCommand::kEnqueue:
      return cmd.enqueue().moved() ? Import(cmd.enqueue().message(), res) : Enqueue(cmd.enqueue().message(), now, res);
    case v1::QueueCommand::kLease: return Lease(cmd.lease(), res);
    case v1::QueueCommand::kAck: return Ack(cmd.ack(), now, res);
    case v1::QueueCommand::kTick: return Tick(cmd.tick(), now, res);
    case v1::QueueCommand::kRelease: return Release(cmd.release(), res);
    // Operator actions (apply_admin.cc).
    case v1::QueueCommand::kRun: return Run(cmd.run(), res);
    case v1::QueueCommand::kManage: return Manage(cmd.manage(), res);
    case v1::QueueCommand::kPurgeHosts: return PurgeHosts(cmd.purge_hosts(), res);
    case v1::QueueCommand::kStats: return Stats(cmd.stats(), now);
    // The metadata shard's records (apply_meta.cc).
    case v1::QueueCommand::kMember: return Member(cmd.member());
    case v1::QueueCommand::kLeader: return Leader(cmd.leader());
    case v1::QueueCommand::kNode: return Node(cmd.node(), now, res);
    case v1::QueueCommand::kPolicy: return Policy(cmd.policy(), now);
    case v1::QueueCommand::kSite: return Site(cmd.site(), now, res);
    case v1::QueueCommand::kSuppress: return Suppress(cmd.suppress(), now, res);
    case v1::QueueCommand::kShardMap: return ShardMap(cmd.shard_map(), now, res);
    // Moving a draining shard's messages (apply_move.cc).
    case v1::QueueCommand::kMove:
      if (cmd.move().kind() == v1::MoveOp::MOVE_LOCK) return MoveLock(cmd.move(), res);
      if (cmd.move().kind() == v1::MoveOp::MOVE_DONE) return MoveDone(cmd.move(), res);
      res->status = Status(Code::kInvalidArgument, "a move is LOCK or DONE");
      return Status::Ok();
    case v1::QueueCommand::OP_NOT_SET: break;
  }
  res->status = Status(Code::kInvalidArgument, "empty queue command");
  return Status::Ok();
}

Status StateMachine::Applier::Commit(uint64_t index, int64_t first_now) {
  if (ctx_.stats_touched) {
    for (auto& [mailer, delta] : ctx_.stats) {
      v1::MailerStats cur;
      bool found = false;
      if (auto st = b_.GetProto(sm_.stats_, mailer, &cur, &found); !st.ok()) return st;
      cur.set_mailer(mailer);
      AddStats(&cur, delta);
      b_.PutProto(sm_.stats_, mailer, cur);
    }
    std::string since;
    bool found = false;
    if (auto st = b_.Get(sm_.meta_, kStatsSinceKey, &since, &found); !st.ok()) return st;
    if (!found) b_.Put(sm_.meta_, kStatsSinceKey, EncodeU64(first_now));
  }
  std::string counts_blob = EncodeU64(static_cast<uint64_t>(ctx_.counts.messages));
  for (auto n : ctx_.counts.by_status) counts_blob += EncodeU64(static_cast<uint64_t>(n));
  b_.Put(sm_.meta_, kCountsKey, counts_blob);
  b_.Put(sm_.meta_, kAppliedKey, EncodeU64(index));

  rocksdb::WriteOptions wo;
  // The Raft log is the durable record and is replayed after a crash (the
  // applied index written in this batch makes that safe): see OpenDb.
  wo.disableWAL = true;
  auto s = sm_.db_->Write(wo, b_.write_batch());
  if (!s.ok() && s.IsIOError()) {
    // A failed flush (the disk filled up) stops RocksDB's writes until
    // Resume(), which flushes again: once space is back the entry applies
    // (libraft retries it) and the shard goes on by itself.
    if (auto r = sm_.db_->Resume(); r.ok()) {
      log::Info("queue store resumed after: " + s.ToString());
      s = sm_.db_->Write(wo, b_.write_batch());
    }
  }
  if (!s.ok()) return FromRocks(s, "queue write");
  sm_.applied_ = index;
  std::lock_guard lock(sm_.mem_mu_);
  for (auto& [id, address] : ctx_.member_ops) {
    if (address.empty()) {
      sm_.members_.erase(id);
    } else {
      sm_.members_[id] = address;
    }
  }
  if (ctx_.policy_version) sm_.policy_version_ = *ctx_.policy_version;
  if (ctx_.preferred_leader) sm_.preferred_leader_ = *ctx_.preferred_leader;
  sm_.counts_ = ctx_.counts;
  sm_.sched_floor_ = ctx_.sched_floor;
  if (ctx_.min_added_qid && *ctx_.min_added_qid < sm_.oldest_hint_) sm_.oldest_hint_ = *ctx_.min_added_qid;
  for (auto& op : ctx_.index_ops) {
    if (op.add) {
      op.index->insert(std::move(op.key));
    } else {
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
  std::string hint;
  {
    std::lock_guard lock(mem_mu_);
    hint = oldest_hint_;
  }
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), msg_));
  it->Seek(hint);
  if (!it->Valid()) return 0;
  auto key = it->key().ToString();
  {
    // Nothing below the first live key but what an Apply adds meanwhile,
    // which lowers the hint itself: raise it only if no Apply did.
    std::lock_guard lock(mem_mu_);
    if (oldest_hint_ == hint) oldest_hint_ = key;
  }
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

void StateMachine::MoveCandidates(size_t max, const std::string& after, std::vector<std::string>* movable,
                                  std::vector<std::pair<std::string, uint32_t>>* locked, std::string* last) const {
  last->clear();
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), msg_));
  if (after.empty()) {
    it->SeekToFirst();
  } else {
    it->Seek(after);
  }
  for (; it->Valid(); it->Next()) {
    const auto key = it->key().ToStringView();
    if (keys::IsBodyKey(key) || key == after) continue;
    if (movable->size() + locked->size() >= max) {
      return;  // more to come: *last says where to go on
    }
    *last = std::string(key);
    v1::Envelope env;
    if (!env.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
    if (env.moving()) {
      locked->emplace_back(std::string(key), env.moving_to());
    } else {
      movable->emplace_back(key);
    }
  }
  last->clear();  // the end
}

std::vector<v1::ShardInfo> StateMachine::ShardMap() const {
  std::vector<v1::ShardInfo> out;
  std::shared_lock db_lock(db_mu_);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta_));
  for (it->Seek(kShardPrefix); it->Valid() && it->key().starts_with(kShardPrefix); it->Next()) {
    v1::ShardInfo s;
    if (s.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) out.push_back(std::move(s));
  }
  return out;
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
