// service.cc — a queue node: its shard replicas (Shard: the Raft log, the
// state machine, the scheduler, the data path and admin RPCs) and the
// mx.v1.Queue service in front of them; mx.v1.Metadata is metadata_service.cc.
#include "mx/queue/service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <thread>

#include "disk_budget.h"
#include "membership.h"
#include "metadata_service.h"
#include "mx/common/address.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/common/qid.h"
#include "mx/common/thread_name.h"
#include "mx/queue/client.h"
#include "mx/queue/metadata_client.h"
#include "mx/queue/shard_map.h"
#include "mx/v1/queue.grpc.pb.h"
#include "probe.h"
#include "raft_log.h"
#include "retry.h"
#include "shard_mover.h"
#include "state_machine.h"

namespace mx::queue {
namespace {

namespace fs = std::filesystem;

constexpr size_t kSnapshotChunk = 1 << 20;

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

// host:port with the port moved up by `shard` (shard s's Raft transport).
std::string ShardAddress(const std::string& hostport, uint32_t shard) {
  auto hp = ParseHostPort(hostport);
  HostPort out = *hp;
  out.port = static_cast<uint16_t>(out.port + shard);
  return out.ToString();
}

// Fetches a snapshot's checkpoint files from the replica that took it.
Status FetchSnapshotFiles(const v1::SnapshotManifest& m, const std::string& dir) {
  if (m.source_address().empty()) return Status(Code::kFailedPrecondition, "snapshot names no source address");
  auto stub = v1::Queue::NewStub(MakeChannel(m.source_address()));
  for (const auto& f : m.files()) {
    const fs::path path = fs::path(dir) / f.name();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t offset = 0;
    for (int attempt = 0; offset < f.size() || attempt == 0; ++attempt) {
      if (attempt >= 5) return Status(Code::kUnavailable, "fetching " + f.name() + " failed 5 times");
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
      v1::FetchSnapshotRequest req;
      req.set_shard(m.shard());
      req.set_index(m.index());
      req.set_file(f.name());
      req.set_offset(offset);
      auto reader = stub->FetchSnapshot(&ctx, req);
      v1::FetchSnapshotChunk chunk;
      while (reader->Read(&chunk)) {
        out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
        offset += chunk.data().size();
      }
      auto st = reader->Finish();
      if (!out) return Status(Code::kUnavailable, "writing " + path.string() + " failed");
      if (st.ok() && offset >= f.size()) break;
      if (!st.ok() && st.error_code() == grpc::StatusCode::NOT_FOUND) {
        return Status(Code::kNotFound, "source no longer has snapshot " + std::to_string(m.index()));
      }
      if (!st.ok()) log::Warn("snapshot fetch of " + f.name() + " interrupted: " + st.error_message() + "; resuming");
    }
    out.close();
  }
  return Status::Ok();
}

// The state machine of the shard whose directory is base.
StateMachineOptions StateOptions(const QueueConfig& config, const fs::path& base) {
  StateMachineOptions so;
  so.dir = (base / "db").string();
  so.class_factor = config.class_factor;
  so.recipient_factor = config.recipient_factor;
  so.retry_factor = config.retry_factor;
  so.sort_order = config.sort_order == "time"     ? StateMachineOptions::SortOrder::kTime
                  : config.sort_order == "host"   ? StateMachineOptions::SortOrder::kHost
                  : config.sort_order == "random" ? StateMachineOptions::SortOrder::kRandom
                                                  : StateMachineOptions::SortOrder::kPriority;
  so.queue_only_delay_us = std::chrono::duration_cast<std::chrono::microseconds>(config.min_backoff).count();
  return so;
}

// Shard id's Raft group on this node. replicas: the founding node ids of a
// shard added online (empty: a configured shard, founded by the peers
// without join); they bootstrap it only where this node is one of them.
RaftLogOptions RaftOptions(const QueueConfig& config, uint32_t id, const std::vector<uint64_t>& replicas,
                           const fs::path& base, const std::string& grpc_address) {
  RaftLogOptions ro;
  ro.shard = id;
  ro.node_id = config.node_id;
  ro.raft_bind = ShardAddress(config.raft_listen, id);
  ro.raft_address = ro.raft_bind;
  const auto founder = [&](uint64_t node) {
    return std::find(replicas.begin(), replicas.end(), node) != replicas.end();
  };
  for (const auto& p : config.peers) {
    if (p.id == config.node_id) ro.raft_address = ShardAddress(p.raft, id);
    const bool boot = replicas.empty() ? !config.join && !p.join : founder(config.node_id) && founder(p.id);
    if (boot) ro.bootstrap.push_back(RaftPeer{p.id, ShardAddress(p.raft, id)});
  }
  ro.grpc_address = grpc_address;
  ro.dir = (base / "raft").string();
  ro.snapshot_dir = (base / "snapshots").string();
  ro.election_timeout_ms = static_cast<unsigned>(config.election_timeout.count());
  ro.heartbeat_timeout_ms = static_cast<unsigned>(config.heartbeat_timeout.count());
  ro.snapshot_threshold = config.snapshot_threshold;
  ro.snapshot_trailing = config.snapshot_trailing;
  ro.segment_size = config.raft_segment_size;
  ro.max_batch_commands = config.group_commit_max_commands;
  ro.max_batch_bytes = config.group_commit_max_bytes;
  ro.linger = config.group_commit_linger;
  ro.shared_group_commit = !config.group_commit_tuned;
  ro.max_inflight_entries = config.max_inflight_entries;
  // Shard s prefers the (s mod n)-th founder (or configured peer) as its leader.
  if (config.balance_leaders && !replicas.empty()) {
    ro.preferred_leader = replicas[id % replicas.size()];
  } else if (config.balance_leaders && !config.peers.empty()) {
    ro.preferred_leader = config.peers[id % config.peers.size()].id;
  }
  return ro;
}

// One shard replica hosted by this node.
class Shard final : public MetadataReplica, public MoveSource {
 public:
  // replicas: the node ids that bootstrap the group of a shard added online
  // (empty: a configured shard, bootstrapped by the non-joining peers).
  Shard(uint32_t id, const QueueConfig& config, const Clock& clock, std::map<uint64_t, std::string> peers,
        DiskBudget* disk, std::vector<uint64_t> replicas = {})
      : id_(id),
        config_(config),
        clock_(clock),
        peers_(std::move(peers)),
        replicas_(std::move(replicas)),
        disk_(disk),
        tag_("shard " + std::to_string(id)) {}
  ~Shard() override { Stop(); }

  mx::Status Start() {
    const fs::path base = fs::path(config_.data_dir) / ("shard-" + std::to_string(id_));
    std::error_code ec;
    fs::create_directories(base, ec);
    if (ec) return mx::Status(Code::kUnavailable, "cannot create " + base.string() + ": " + ec.message());
    const StateMachineOptions so = StateOptions(config_, base);
    auto sm = StateMachine::Open(so);
    if (!sm.ok()) return sm.status();
    sm_ = std::move(sm).value();

    base_ = base;
    if (fs::exists(RetiredMarker())) {
      retired_ = true;
      log::Warn(tag_ + ": this replica was removed from the shard's group (" + RetiredMarker() +
                "); it answers for nothing until its directory is wiped");
    }
    const RaftLogOptions ro = RaftOptions(config_, id_, replicas_, base, SelfAddress());
    snapshot_dir_ = ro.snapshot_dir;
    auto log = StartRaftLog(ro, *sm_, &FetchSnapshotFiles);
    if (!log.ok()) return log.status();
    log_ = std::move(log).value();
    membership_ =
        std::make_unique<Membership>(*this, *log_, id_, config_.node_id,
                                     std::chrono::duration_cast<std::chrono::milliseconds>(config_.election_timeout),
                                     clock_, [this](uint64_t node) { return AddressOf(node); });
    log_->OnLeadershipChange([this](bool leader) {
      if (leader && on_leader_) {
        // A single replica's first term has no predecessor that is still
        // running (its own previous process is gone).
        const bool predecessor = led_before_ || config_.peers.size() > 1;
        led_before_ = true;
        on_leader_(predecessor);
      }
      SignalWork();
    });
    log::Info(tag_ + " opened " + so.dir + " at applied index " + std::to_string(sm_->applied_index()) + ", " +
              std::to_string(sm_->counts().messages) + " messages");
    Probe::Get().SetCounts(id_, sm_->counts(), 0);  // the gauges exist from the start
    ticker_ = std::thread([this] {
      SetThreadName("mx-tick-" + std::to_string(id_));
      TickLoop();
    });
    return mx::Status::Ok();
  }

  void Stop() {
    {
      std::lock_guard lock(pull_mu_);
      if (stopping_) return;
      stopping_ = true;
      pull_cv_.notify_all();
      tick_cv_.notify_all();
    }
    if (ticker_.joinable()) ticker_.join();
    if (log_) log_->Stop();
  }

  StateMachine& sm() { return *sm_; }
  RaftLog& log() { return *log_; }
  Membership& membership() { return *membership_; }
  uint32_t id() const override { return id_; }
  // The shard map's word on this shard (the node's watcher): draining and
  // retired shards take no new mail.
  void SetMapState(v1::ShardInfo::State state, bool move) {
    map_state_ = state;
    move_ = move;
  }
  v1::ShardInfo::State map_state() const { return map_state_; }
  // Draining by moving its messages to the active shards (the node's mover).
  bool moving() const { return map_state_ == v1::ShardInfo::SHARD_DRAINING && move_; }
  int64_t messages() const { return sm_->counts().messages; }

  // ---- MoveSource: the mover's steps on this shard (its leader) ----
  void MoveCandidates(size_t max, const std::string& after, std::vector<std::string>* movable,
                      std::vector<std::pair<std::string, uint32_t>>* locked, std::string* last) const override {
    sm_->MoveCandidates(max, after, movable, locked, last);
  }
  Result<std::vector<std::string>> CommitMove(v1::MoveOp::Kind kind, const std::vector<std::string>& qids,
                                              uint32_t target, bool retarget) override {
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    auto* op = cmd.mutable_move();
    op->set_kind(kind);
    op->set_target(target);
    op->set_retarget(retarget);
    for (const auto& q : qids) op->add_qids(q);
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok()) return r.status;
    return std::move(r.qids);
  }
  Result<v1::NewMessage> ReadForMove(const std::string& qid) const override {
    auto env = sm_->GetEnvelope(qid);
    if (!env.ok()) return env.status();
    auto body = sm_->GetBody(qid);
    if (!body.ok()) return body.status();
    v1::NewMessage m;
    for (auto& r : sm_->GetRecipients(qid, env->nrcpts())) *m.add_recipients() = std::move(r);
    *m.mutable_envelope() = std::move(env).value();
    m.set_body(std::move(body).value());
    return m;
  }
  // Before Start: runs when this replica becomes the leader (predecessor:
  // whether an earlier leader may still be running).
  void OnLeader(std::function<void(bool predecessor)> fn) { on_leader_ = std::move(fn); }

  // MetadataReplica.
  bool IsLeader() const override { return log_->IsLeader(); }
  grpc::Status RefuseNotLeader(grpc::ServerContextBase* ctx) const override { return NotLeader(ctx); }
  grpc::Status CommitError(grpc::ServerContextBase* ctx, const mx::Status& st) const override {
    return CommitFailed(ctx, st);
  }
  ApplyResult CommitAndWait(v1::QueueCommand cmd) override { return Commit(std::move(cmd)); }
  const StateMachine& state() const override { return *sm_; }
  const std::string& tag() const override { return tag_; }
  const std::string& snapshot_dir() const { return snapshot_dir_; }

  // gRPC address of a queue node: the replicated member table, then the config.
  std::string AddressOf(uint64_t node_id) const {
    if (node_id == 0) return "";
    auto members = sm_->Members();
    if (auto it = members.find(node_id); it != members.end()) return it->second;
    if (auto it = peers_.find(node_id); it != peers_.end()) return it->second;
    return "";
  }
  std::string SelfAddress() const {
    auto it = peers_.find(config_.node_id);
    return it != peers_.end() ? it->second : config_.listen;
  }

  // UNAVAILABLE with the leader's address, when this replica is not the leader.
  // Unless `proposed`, the request was refused before it reached the log, which
  // the client learns from kRejectedMetadataKey (it may then go elsewhere).
  grpc::Status NotLeader(grpc::ServerContextBase* ctx, const std::string& why = "", bool proposed = false) const {
    if (!proposed && !IsMember()) {
      // Removed from the group: what it last knew of the leader is stale
      // (two removed replicas would send clients back and forth); no hint,
      // so the client moves on to the next address.
      ctx->AddTrailingMetadata(kRejectedMetadataKey, "1");
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, tag_ + ": this node is not a replica of the shard");
    }
    std::string leader = AddressOf(log_->LeaderId());
    if (!leader.empty() && log_->LeaderId() != config_.node_id) ctx->AddTrailingMetadata(kLeaderMetadataKey, leader);
    if (!proposed) ctx->AddTrailingMetadata(kRejectedMetadataKey, "1");
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        (why.empty() ? tag_ + ": this replica is not the leader" : why) +
                            (leader.empty() ? "; no leader known" : "; leader is " + leader));
  }
  // Whether this node is in the shard's Raft configuration (as of the last
  // status refresh; a node that joins counts once it is added).
  bool IsMember() const {
    if (retired_) return false;
    const auto status = log_->GetStatus();
    return status.members().empty() || std::any_of(status.members().begin(), status.members().end(),
                                                   [&](const auto& m) { return m.id() == config_.node_id; });
  }
  // Maps a failed commit to a gRPC status, with the leader hint if leadership moved.
  grpc::Status CommitFailed(grpc::ServerContextBase* ctx, const mx::Status& st) const {
    if (st.code() == Code::kUnavailable) return NotLeader(ctx, st.message(), /*proposed=*/true);
    return ToGrpc(st);
  }

  using Finish = std::function<void(const grpc::Status&)>;

  // Asynchronous: `finish` runs once the entry is committed and applied (on the
  // Raft loop thread), so no gRPC thread waits for the quorum.
  void Enqueue(grpc::ServerContextBase* ctx, const v1::EnqueueRequest* req, v1::EnqueueResponse* resp, Finish finish) {
    bool not_leader = false;
    if (auto st = Admit(req->message(), &not_leader, req->moved()); !st.ok()) {
      if (not_leader) return finish(NotLeader(ctx));
      // Draining: nothing was proposed, the client may go to another shard.
      if (st.code() == Code::kUnavailable) ctx->AddTrailingMetadata(kRejectedMetadataKey, "1");
      return finish(ToGrpc(st));
    }
    ProposeEnqueue(
        req->message(), req->moved(),
        [this, ctx, resp, finish = std::move(finish), qid = req->message().envelope().qid()](const ApplyResult& r) {
          if (!r.status.ok()) return finish(CommitFailed(ctx, r.status));
          resp->set_qid(qid);
          resp->set_commit_index(sm_->applied_index());
          finish(grpc::Status::OK);
        });
  }

  // Each message as Enqueue would take it, answered per message once the
  // last one is settled; the call fails only when nothing was proposed.
  void EnqueueBatch(grpc::ServerContextBase* ctx, const v1::EnqueueBatchRequest* req, v1::EnqueueBatchResponse* resp,
                    const Finish& finish) {
    if (req->messages().empty()) {
      return finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "EnqueueBatch carries no message"));
    }
    if (!log_->IsLeader()) return finish(NotLeader(ctx));
    struct Settle {
      explicit Settle(int n) : left(n) {}
      std::atomic<int> left;
      std::atomic<bool> lost_leader{false};
    };
    const int n = req->messages_size();
    auto settle = std::make_shared<Settle>(n + 1);  // + 1: this loop, so no answer goes before every proposal
    for (int i = 0; i < n; ++i) resp->add_results();
    auto one_done = [this, ctx, resp, settle, finish] {
      if (settle->left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      // A proposal lost with the leadership: the leader hint, without the
      // rejected flag (those messages may still commit here).
      if (settle->lost_leader.load()) NotLeader(ctx, "", /*proposed=*/true);
      resp->set_commit_index(sm_->applied_index());
      finish(grpc::Status::OK);
    };
    for (int i = 0; i < n; ++i) {
      const auto& m = req->messages(i);
      auto* result = resp->mutable_results(i);
      bool not_leader = false;
      if (auto st = Admit(m, &not_leader); !st.ok()) {
        result->set_code(static_cast<int32_t>(ToGrpc(st).error_code()));
        result->set_message(st.message());
        result->set_rejected(true);  // never proposed: not the leader, draining, invalid, disk full
        one_done();
        continue;
      }
      ProposeEnqueue(m, false, [result, settle, one_done](const ApplyResult& r) {
        if (!r.status.ok()) {
          result->set_code(static_cast<int32_t>(ToGrpc(r.status).error_code()));
          result->set_message(r.status.message());
          if (r.status.code() == Code::kUnavailable) settle->lost_leader = true;
        }
        one_done();
      });
    }
    one_done();
  }

  // The same checks and commit for an ingress in this process (mxd all),
  // without the transport: `done` gets OK once committed, or the refusal
  // (kUnavailable when this replica does not lead the shard).
  void EnqueueLocal(const v1::NewMessage& m, std::function<void(const mx::Status&)> done) {
    bool not_leader = false;
    if (auto st = Admit(m, &not_leader); !st.ok()) return done(st);
    ProposeEnqueue(m, false, [done = std::move(done)](const ApplyResult& r) { done(r.status); });
  }
  uint64_t UnflushedBytes() const { return sm_ ? sm_->UnflushedBytes() : 0; }

  // Enqueue's admission checks; *not_leader tells why a kUnavailable refusal
  // came. A message moved from a draining shard is taken unless this shard
  // is retired.
  mx::Status Admit(const v1::NewMessage& m, bool* not_leader, bool moved = false) {
    if (auto st = ValidateNewMessage(m); !st.ok()) {
      Probe::Get().EnqueueRejected();
      return st;
    }
    if (!log_->IsLeader()) {
      *not_leader = true;
      return mx::Status(Code::kUnavailable, tag_ + ": this replica is not the leader");
    }
    if (const auto state = map_state_.load();
        state == v1::ShardInfo::SHARD_RETIRED || (state == v1::ShardInfo::SHARD_DRAINING && !moved)) {
      // A retry of a message an earlier attempt committed here is answered
      // as such, so the client does not place it on a second shard.
      if (sm_->GetEnvelope(m.envelope().qid()).ok()) {
        return mx::Status(Code::kAlreadyExists, "queue id " + m.envelope().qid() + " exists");
      }
      return mx::Status(Code::kUnavailable, tag_ + " is " +
                                                (state == v1::ShardInfo::SHARD_DRAINING ? "draining" : "retired") +
                                                ": new mail goes to the other shards");
    }
    // The body lands twice: in the Raft log at once, in a blob file when
    // the memtable holding it flushes.
    if (auto st = disk_->Admit(2 * m.body().size() + 1024); !st.ok()) {
      Probe::Get().EnqueueRejected();
      return mx::Status(st.code(), tag_ + ": " + st.message());
    }
    return mx::Status::Ok();
  }

  // Proposes the Enqueue command; `committed` runs on the Raft loop thread.
  void ProposeEnqueue(const v1::NewMessage& m, bool moved, std::function<void(const ApplyResult&)> committed) {
    auto start = std::chrono::steady_clock::now();
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    *cmd.mutable_enqueue()->mutable_message() = m;
    cmd.mutable_enqueue()->set_moved(moved);
    log_->Propose(std::move(cmd), [this, start, committed = std::move(committed)](const ApplyResult& r) {
      if (!r.status.ok()) {
        Probe::Get().EnqueueRejected();
      } else {
        SignalWork();
        Probe::Get().Enqueued(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      committed(r);
    });
  }

  grpc::Status Pull(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::PullResponse, v1::PullRequest>* stream,
                    const v1::PullRequest& first) {
    if (first.worker().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first PullRequest must name the worker");
    }
    if (!log_->IsLeader()) return NotLeader(ctx);
    const std::string& worker = first.worker();
    // Leases of this worker's earlier incarnations (a crashed process) are void.
    if (auto slash = worker.rfind('/'); slash != std::string::npos && slash > 0) {
      v1::QueueCommand cmd;
      cmd.set_now_unix_us(clock_.NowUnixMicros());
      cmd.mutable_release()->set_owner_prefix(worker.substr(0, slash + 1));
      cmd.mutable_release()->set_keep_owner(worker);
      ApplyResult r = Commit(std::move(cmd));
      if (!r.status.ok()) return CommitFailed(ctx, r.status);
      if (r.made_ready > 0) {
        log::Info(tag_ + ": released " + std::to_string(r.made_ready) +
                  " recipients leased by earlier incarnations of " + worker.substr(0, slash));
        SignalWork();
      }
    }
    struct StreamState {
      uint64_t credits = 0;
      bool done = false;
    } st;
    st.credits = first.credits();
    log::Info(tag_ + ": pull stream opened by worker " + worker);
    std::thread reader([&] {
      v1::PullRequest r;
      while (stream->Read(&r)) {
        std::lock_guard lock(pull_mu_);
        if (r.revoke()) st.credits = 0;
        st.credits += r.credits();
        pull_cv_.notify_all();
      }
      std::lock_guard lock(pull_mu_);
      st.done = true;
      pull_cv_.notify_all();
    });
    grpc::Status result = grpc::Status::OK;
    uint64_t seen_gen = ~0ULL;
    for (;;) {
      uint64_t credits;
      {
        std::unique_lock lock(pull_mu_);
        pull_cv_.wait_for(lock, std::chrono::seconds(1),
                          [&] { return st.done || stopping_ || (st.credits > 0 && work_gen_ != seen_gen); });
        if (st.done || stopping_) break;
        if (st.credits == 0) continue;
        credits = st.credits;
        seen_gen = work_gen_;
      }
      if (ctx->IsCancelled()) break;
      if (!log_->IsLeader()) {
        // The worker reconnects to the new leader, which knows every lease.
        result = NotLeader(ctx, tag_ + ": leadership moved");
        break;
      }
      v1::PullResponse resp;
      LeaseMessages(worker, static_cast<uint32_t>(std::min<uint64_t>(credits, config_.pull_batch)), &resp);
      if (resp.messages_size() == 0) continue;  // nothing ready: wait for a work signal
      {
        std::lock_guard lock(pull_mu_);
        st.credits -= std::min<uint64_t>(st.credits, resp.messages_size());
      }
      seen_gen = ~0ULL;  // more may be ready (a backlog): lease again as soon as credits allow
      if (!stream->Write(resp)) {
        // The worker may not have them: back to ready now, not after lease_ttl.
        v1::QueueCommand cmd;
        cmd.set_now_unix_us(clock_.NowUnixMicros());
        for (const auto& m : resp.messages()) {
          for (const auto& r : m.recipients()) {
            auto* item = cmd.mutable_release()->add_items();
            item->set_qid(m.envelope().qid());
            item->set_index(r.index());
          }
        }
        if (Commit(std::move(cmd)).made_ready > 0) SignalWork();
        break;
      }
    }
    ctx->TryCancel();  // unblocks the reader's Read
    reader.join();
    log::Info(tag_ + ": pull stream closed by worker " + worker);
    return result;
  }

  void Ack(grpc::ServerContextBase* ctx, const v1::AckRequest* req, Finish finish) {
    int64_t now = clock_.NowUnixMicros();
    for (const auto& r : req->results()) {
      if (r.qid().empty() || r.outcome() == v1::OUTCOME_UNSPECIFIED) {
        return finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "every result needs a qid and an outcome"));
      }
    }
    for (const auto& d : req->dsns()) {
      if (auto st = ValidateNewMessage(d); !st.ok()) return finish(ToGrpc(st));
    }
    if (!log_->IsLeader()) return finish(NotLeader(ctx));
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(now);
    auto* op = cmd.mutable_ack();
    for (const auto& r : req->results()) {
      auto* out = op->add_results();
      *out = r;
      if (r.outcome() == v1::OUTCOME_DEFERRED && r.throttled()) {
        // A suspended site's recipients wait for its end (at most an hour).
        const int64_t later = std::min<int64_t>(r.not_before_unix_us(), now + 3'600'000'000LL);
        out->set_next_attempt_unix_us(std::max(now + ThrottleDelay(), later));
      } else if (r.outcome() == v1::OUTCOME_DEFERRED) {
        auto rc = sm_->GetRecipient(r.qid(), r.index());
        uint32_t attempts = rc.ok() ? rc->attempts() : 0;
        out->set_next_attempt_unix_us(now + Backoff(attempts));
      }
    }
    for (const auto& d : req->dsns()) *op->add_dsns() = d;
    for (const auto& h : req->hosts()) *op->add_hosts() = h;
    log_->Propose(std::move(cmd), [this, ctx, req, finish = std::move(finish)](const ApplyResult& r) {
      if (!r.status.ok()) return finish(CommitFailed(ctx, r.status));
      for (const auto& res : req->results()) Probe::Get().Acked(res.outcome());
      if (r.made_ready > 0) SignalWork();
      finish(grpc::Status::OK);
    });
  }

  grpc::Status RecordStats(grpc::ServerContext* ctx, const v1::RecordStatsRequest* req) {
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    for (const auto& d : req->deltas()) {
      if (d.mailer().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "mailer is required");
      *cmd.mutable_stats()->add_deltas() = d;
    }
    cmd.mutable_stats()->set_reset(req->reset());
    if (!log_->IsLeader()) return NotLeader(ctx);
    ApplyResult r = Commit(std::move(cmd));
    return r.status.ok() ? grpc::Status::OK : CommitFailed(ctx, r.status);
  }

  grpc::Status RunQueue(grpc::ServerContext* ctx, const v1::RunQueueRequest* req, v1::RunQueueResponse* resp) {
    if (!log_->IsLeader()) return NotLeader(ctx);
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    *cmd.mutable_run() = req->filter();
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok()) return CommitFailed(ctx, r.status);
    resp->set_made_ready(r.made_ready);
    if (r.made_ready) SignalWork();
    log::Info(tag_ + ": queue run (domain='" + req->filter().domain() + "' qid~'" + req->filter().qid_substring() +
              "' sender~'" + req->filter().sender_substring() + "' rcpt~'" + req->filter().rcpt_substring() +
              "'): " + std::to_string(r.made_ready) + " recipients ready");
    return grpc::Status::OK;
  }

  grpc::Status Manage(grpc::ServerContext* ctx, const v1::ManageRequest* req, v1::ManageResponse* resp) {
    const auto action = req->op().action();
    if (action != v1::ManageOp::MANAGE_HOLD && action != v1::ManageOp::MANAGE_RELEASE &&
        action != v1::ManageOp::MANAGE_DELETE && action != v1::ManageOp::MANAGE_BOUNCE) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "action must be hold, release, delete or bounce");
    }
    if (!log_->IsLeader()) return NotLeader(ctx);
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    *cmd.mutable_manage() = req->op();
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok()) return CommitFailed(ctx, r.status);
    resp->set_recipients(r.recipients);
    resp->set_messages(r.messages);
    resp->set_skipped(r.skipped);
    if (r.made_ready) SignalWork();
    log::Info(tag_ + ": " + v1::ManageOp::Action_Name(action) + ": " + std::to_string(r.recipients) + " recipients, " +
              std::to_string(r.messages) + " messages deleted, " + std::to_string(r.skipped) +
              " skipped (in delivery)");
    return grpc::Status::OK;
  }

  grpc::Status PurgeHostStatus(grpc::ServerContext* ctx, const v1::PurgeHostStatusRequest* req,
                               v1::PurgeHostStatusResponse* resp) {
    if (!log_->IsLeader()) return NotLeader(ctx);
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    cmd.mutable_purge_hosts()->set_host(req->host());
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok()) return CommitFailed(ctx, r.status);
    resp->set_purged(r.purged);
    return grpc::Status::OK;
  }

  // The leader removed this replica from the group (RetireReplica).
  void Retire() {
    if (retired_.exchange(true)) return;
    std::ofstream(RetiredMarker()) << "removed from the shard's Raft group; wipe this directory before adding the "
                                      "node again\n";
    log::Info(tag_ + ": removed from the group: no longer answering for the shard");
  }
  bool retired() const { return retired_; }

  v1::ReplicaStatus ReplicaStatus() const {
    auto s = log_->GetStatus();
    if (retired_) s.set_role("removed");
    s.set_leader_address(AddressOf(s.leader_id()));
    for (auto& m : *s.mutable_members()) m.set_grpc_address(AddressOf(m.id()));
    const auto counts = sm_->counts();
    s.set_ready(counts.by_status[v1::RCPT_READY]);
    s.set_leased(counts.by_status[v1::RCPT_LEASED]);
    s.set_deferred(counts.by_status[v1::RCPT_DEFERRED]);
    s.set_held(counts.by_status[v1::RCPT_HELD]);
    const int64_t oldest = sm_->OldestArrival();
    if (oldest > 0) s.set_oldest_age_seconds(std::max<int64_t>(0, (clock_.NowUnixMicros() - oldest) / 1'000'000));
    return s;
  }

 private:
  mx::Status ValidateNewMessage(const v1::NewMessage& m) const {
    const auto& env = m.envelope();
    if (QidGenerator::TimeOf(env.qid()) < 0) {
      return mx::Status(Code::kInvalidArgument, "envelope.qid '" + env.qid() + "' is not a valid queue id");
    }
    if (m.recipients_size() == 0) return mx::Status(Code::kInvalidArgument, "a message needs at least one recipient");
    for (const auto& r : m.recipients()) {
      if (r.address().empty()) return mx::Status(Code::kInvalidArgument, "empty recipient address");
    }
    if (env.size() != m.body().size()) {
      return mx::Status(Code::kInvalidArgument, "envelope.size does not match the body length");
    }
    return mx::Status::Ok();
  }

  // Exponential retry delay after `attempts` earlier failures, with jitter,
  // never below min_backoff (MinQueueAge) nor above max_backoff.
  int64_t Backoff(uint32_t attempts) const {
    int64_t min = std::chrono::duration_cast<std::chrono::microseconds>(config_.min_backoff).count();
    int64_t max = std::chrono::duration_cast<std::chrono::microseconds>(config_.max_backoff).count();
    thread_local std::mt19937_64 rng{std::random_device{}()};
    return RetryDelayUs(attempts, min, max, std::uniform_real_distribution<double>(0, 0.25)(rng));
  }

  // A recipient held back by a delivery limit goes again soon: within a few
  // seconds (jittered so a crowd spreads out), never later than min_backoff.
  int64_t ThrottleDelay() const {
    const int64_t min = std::chrono::duration_cast<std::chrono::microseconds>(config_.min_backoff).count();
    thread_local std::mt19937_64 rng{std::random_device{}()};
    const int64_t d = 2'000'000 + static_cast<int64_t>(std::uniform_real_distribution<double>(0, 3e6)(rng));
    return std::min(d, min);
  }

  ApplyResult Commit(v1::QueueCommand cmd) {
    auto p = std::make_shared<std::promise<ApplyResult>>();
    auto f = p->get_future();
    log_->Propose(std::move(cmd), [p](const ApplyResult& r) { p->set_value(r); });
    return f.get();  // the log answers every proposal, also when stopping
  }

  void SignalWork() {
    std::lock_guard lock(pull_mu_);
    ++work_gen_;
    pull_cv_.notify_all();
  }

  // Leases up to max_msgs messages' ready recipients to worker.
  void LeaseMessages(const std::string& worker, uint32_t max_msgs, v1::PullResponse* resp) {
    std::lock_guard lease_lock(lease_mu_);  // one lease decision at a time: no double handout
    auto candidates = sm_->ReadyItems(static_cast<size_t>(max_msgs) * 4);
    if (candidates.empty()) return;
    v1::QueueCommand cmd;
    int64_t now = clock_.NowUnixMicros();
    cmd.set_now_unix_us(now);
    const int64_t expiry = now + std::chrono::duration_cast<std::chrono::microseconds>(config_.lease_ttl).count();
    auto* op = cmd.mutable_lease();  // only valid until cmd is moved into Commit()
    op->set_worker(worker);
    op->set_expiry_unix_us(expiry);
    std::map<std::string, v1::Envelope> chosen;  // envelopes read once, reused for the response
    uint64_t bytes = 0;
    for (auto& c : candidates) {
      if (!chosen.count(c.qid())) {
        if (chosen.size() >= max_msgs) continue;
        auto env = sm_->GetEnvelope(c.qid());
        if (!env.ok()) continue;
        if (!chosen.empty() && bytes + env->size() > config_.pull_batch_bytes) continue;
        bytes += env->size();
        chosen.emplace(c.qid(), std::move(env).value());
      }
      *op->add_items() = c;
    }
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok() || r.leased.empty()) return;
    Probe::Get().Leased(r.leased.size());
    std::map<std::string, v1::LeasedMessage*> by_qid;
    for (size_t i = 0; i < r.leased.size(); ++i) {
      const auto& qid = r.leased[i].qid();
      auto& lm = by_qid[qid];
      if (!lm) {
        auto body = sm_->GetBody(qid);
        if (!body.ok()) continue;  // lease expires; retried later
        lm = resp->add_messages();
        *lm->mutable_envelope() = std::move(chosen[qid]);
        *lm->mutable_body() = std::move(body).value();
        lm->set_lease_expiry_unix_us(expiry);
      }
      *lm->add_recipients() = std::move(r.leased_rcpts[i]);
    }
  }

  // Leader: returns due deferred recipients and expired leases to ready.
  // Every replica: refreshes its gauges.
  void TickLoop() {
    for (;;) {
      {
        std::unique_lock lock(pull_mu_);
        // Its own condition variable: SignalWork (every commit) wakes only the
        // Pull streams, not the ticker.
        tick_cv_.wait_for(lock, config_.tick_interval, [&] { return stopping_; });
        if (stopping_) return;
      }
      int64_t now = clock_.NowUnixMicros();
      if (log_->IsLeader() && sm_->EarliestScheduled() <= now) {
        v1::QueueCommand cmd;
        cmd.set_now_unix_us(now);
        cmd.mutable_tick()->set_max_items(10000);
        ApplyResult r = Commit(std::move(cmd));
        if (r.status.ok() && r.made_ready > 0) SignalWork();
      }
      int64_t oldest = sm_->OldestArrival();
      Probe::Get().SetCounts(id_, sm_->counts(), oldest > 0 ? (now - oldest) / 1'000'000 : 0);
    }
  }

  const uint32_t id_;
  QueueConfig config_;
  const Clock& clock_;
  const std::map<uint64_t, std::string> peers_;  // from the config: node id -> gRPC address
  const std::vector<uint64_t> replicas_;         // bootstrap ids of a shard added online
  DiskBudget* const disk_;                       // the node's, shared by its shards
  const std::string tag_;
  std::string snapshot_dir_;
  fs::path base_;  // the shard's directory under data_dir
  std::string RetiredMarker() const { return (base_ / "REMOVED").string(); }
  std::unique_ptr<StateMachine> sm_;
  std::unique_ptr<RaftLog> log_;
  std::unique_ptr<Membership> membership_;
  std::function<void(bool)> on_leader_;
  std::atomic<bool> led_before_{false};
  std::atomic<bool> retired_{false};  // removed from the group (Retire)
  std::atomic<v1::ShardInfo::State> map_state_{v1::ShardInfo::SHARD_ACTIVE};
  std::atomic<bool> move_{false};
  std::mutex lease_mu_;
  std::mutex pull_mu_;
  std::condition_variable pull_cv_;
  std::condition_variable tick_cv_;  // stopping only
  uint64_t work_gen_ = 0;
  bool stopping_ = false;
  std::thread ticker_;
};

// Enqueue and Ack use gRPC's callback API (they finish when the Raft entry
// commits); the other methods are synchronous.
using QueueServiceBase = v1::Queue::WithCallbackMethod_Enqueue<
    v1::Queue::WithCallbackMethod_EnqueueBatch<v1::Queue::WithCallbackMethod_Ack<v1::Queue::Service>>>;

class QueueServiceImpl final : public QueueServiceBase, public QueueNode {
 public:
  QueueServiceImpl(const QueueConfig& config, const Clock& clock)
      : config_(config),
        clock_(clock),
        disk_(config.data_dir, config.min_free_disk, clock, [this] { return UnflushedBytes(); }) {
    for (const auto& p : config.peers) peers_[p.id] = p.grpc;
    for (uint32_t s = 0; s < config.shards; ++s) Install(std::make_unique<Shard>(s, config, clock, peers_, &disk_));
    Shard& meta = *Get(kMetadataShard);
    ShardDefaults defaults;
    defaults.shards = config.shards;
    for (const auto& p : config.peers) {
      if (!p.join) defaults.bootstrap.push_back(p.id);
      defaults.known.insert(p.id);
    }
    if (defaults.bootstrap.empty()) defaults.bootstrap.push_back(config.node_id);
    defaults.known.insert(config.node_id);
    metadata_ = std::make_unique<MetadataService>(meta, clock, std::move(defaults));
    meta.OnLeader([this](bool predecessor) { metadata_->BecameLeader(predecessor); });
  }
  ~QueueServiceImpl() override { Stop(); }

  Status Start() {
    for (uint32_t s = 0; s < config_.shards; ++s) {
      if (auto st = Get(s)->Start(); !st.ok()) return st;
    }
    std::vector<std::string> seeds;
    for (const auto& [id, grpc] : peers_) seeds.push_back(grpc);
    if (seeds.empty()) seeds.push_back(config_.listen);
    router_ = std::make_unique<QueueRouter>(seeds, config_.shards);
    metadata_client_ = std::make_unique<MetadataClient>(*router_);
    // The map applied to router_ (the mover's targets), then acted on.
    watcher_ = std::make_unique<ShardMapFollower>(*router_, std::chrono::seconds(1), nullptr,
                                                  [this](const auto& map) { FollowShardMap(map); });
    mover_ = std::make_unique<ShardMover>(*router_);
    mover_thread_ = std::thread([this] {
      SetThreadName("mx-mover");
      MoveLoop();
    });
    return Status::Ok();
  }

  grpc::Service* service() override { return this; }
  grpc::Service* metadata_service() override { return metadata_.get(); }
  void Stop() override {
    {
      std::lock_guard lock(mover_mu_);
      stopping_ = true;
    }
    mover_cv_.notify_all();
    watcher_.reset();
    if (mover_thread_.joinable()) mover_thread_.join();
    std::lock_guard lock(owned_mu_);
    for (auto& s : owned_) s->Stop();
  }

  grpc::ServerUnaryReactor* Enqueue(grpc::CallbackServerContext* ctx, const v1::EnqueueRequest* req,
                                    v1::EnqueueResponse* resp) override {
    return PlaceOnShard(ctx, req->shard(),
                        [&](Shard& s, Shard::Finish finish) { s.Enqueue(ctx, req, resp, std::move(finish)); });
  }

  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* ctx, const v1::EnqueueBatchRequest* req,
                                         v1::EnqueueBatchResponse* resp) override {
    return PlaceOnShard(ctx, req->shard(),
                        [&](Shard& s, const Shard::Finish& finish) { s.EnqueueBatch(ctx, req, resp, finish); });
  }

  // Enqueue and EnqueueBatch: `handle` runs on the shard, which finishes the
  // call; a shard this node does not serve is refused with the rejected
  // flag (nothing proposed: the client may place the mail elsewhere).
  template <typename Handle>
  grpc::ServerUnaryReactor* PlaceOnShard(grpc::CallbackServerContext* ctx, uint32_t shard, const Handle& handle) {
    auto* reactor = ctx->DefaultReactor();
    grpc::Status err;
    if (auto* s = Find(shard, &err)) {
      handle(*s, [reactor](const grpc::Status& st) { reactor->Finish(st); });
    } else {
      ctx->AddTrailingMetadata(kRejectedMetadataKey, "1");
      reactor->Finish(err);
    }
    return reactor;
  }

  bool EnqueueLocal(uint32_t shard, const v1::NewMessage& message,
                    std::function<void(const mx::Status&)> done) override {
    Shard* s = Get(shard);
    if (!s || !s->IsLeader()) return false;
    s->EnqueueLocal(message, std::move(done));
    return true;
  }

  grpc::Status Pull(grpc::ServerContext* ctx,
                    grpc::ServerReaderWriter<v1::PullResponse, v1::PullRequest>* stream) override {
    v1::PullRequest first;
    if (!stream->Read(&first)) return grpc::Status::OK;
    grpc::Status err;
    auto* s = Find(first.shard(), &err);
    return s ? s->Pull(ctx, stream, first) : err;
  }

  grpc::ServerUnaryReactor* Ack(grpc::CallbackServerContext* ctx, const v1::AckRequest* req,
                                v1::AckResponse*) override {
    auto* reactor = ctx->DefaultReactor();
    grpc::Status err;
    if (auto* s = Find(req->shard(), &err)) {
      s->Ack(ctx, req, [reactor](const grpc::Status& st) { reactor->Finish(st); });
    } else {
      reactor->Finish(err);
    }
    return reactor;
  }

  grpc::Status List(grpc::ServerContext* ctx, const v1::ListRequest* req, v1::ListResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    if (!s) return err;
    if (!s->log().IsLeader()) return s->NotLeader(ctx);
    s->sm().List(*req, resp);
    return grpc::Status::OK;
  }

  grpc::Status GetStats(grpc::ServerContext* ctx, const v1::GetStatsRequest* req, v1::GetStatsResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    if (!s) return err;
    if (!s->log().IsLeader()) return s->NotLeader(ctx);
    s->sm().Stats(resp);
    return grpc::Status::OK;
  }

  grpc::Status RecordStats(grpc::ServerContext* ctx, const v1::RecordStatsRequest* req,
                           v1::RecordStatsResponse*) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->RecordStats(ctx, req) : err;
  }

  grpc::Status FetchSnapshot(grpc::ServerContext* ctx, const v1::FetchSnapshotRequest* req,
                             grpc::ServerWriter<v1::FetchSnapshotChunk>* writer) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    if (!s) return err;
    const auto& name = req->file();
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad snapshot file name '" + name + "'");
    }
    const fs::path path = fs::path(s->snapshot_dir()) / std::to_string(req->index()) / name;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "no file " + name + " in snapshot " + std::to_string(req->index()) + " (pruned?)");
    }
    in.seekg(static_cast<std::streamoff>(req->offset()));
    std::string buf(kSnapshotChunk, '\0');
    v1::FetchSnapshotChunk chunk;
    while (!ctx->IsCancelled()) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      auto n = in.gcount();
      if (n <= 0) break;
      chunk.set_data(buf.data(), static_cast<size_t>(n));
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "fetcher went away");
    }
    return grpc::Status::OK;
  }

  grpc::Status GetReplicaStatus(grpc::ServerContext*, const v1::GetReplicaStatusRequest*,
                                v1::GetReplicaStatusResponse* resp) override {
    resp->set_node_id(config_.node_id);
    for (Shard* s : All()) {
      *resp->add_replicas() = s->ReplicaStatus();
      if (resp->address().empty()) resp->set_address(s->SelfAddress());
    }
    return grpc::Status::OK;
  }

  grpc::Status AddReplica(grpc::ServerContext* ctx, const v1::AddReplicaRequest* req,
                          v1::AddReplicaResponse*) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->membership().AddReplica(ctx, req) : err;
  }

  grpc::Status RemoveReplica(grpc::ServerContext* ctx, const v1::RemoveReplicaRequest* req,
                             v1::RemoveReplicaResponse*) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->membership().RemoveReplica(ctx, req) : err;
  }

  grpc::Status RetireReplica(grpc::ServerContext*, const v1::RetireReplicaRequest* req,
                             v1::RetireReplicaResponse*) override {
    if (req->node_id() != config_.node_id) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "this is node " + std::to_string(config_.node_id) +
                                                                  ", not " + std::to_string(req->node_id()));
    }
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    if (!s) return err;
    s->Retire();
    return grpc::Status::OK;
  }

  grpc::Status TransferLeader(grpc::ServerContext* ctx, const v1::TransferLeaderRequest* req,
                              v1::TransferLeaderResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->membership().TransferLeader(ctx, req, resp) : err;
  }

  grpc::Status Manage(grpc::ServerContext* ctx, const v1::ManageRequest* req, v1::ManageResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->Manage(ctx, req, resp) : err;
  }

  grpc::Status ListHostStatus(grpc::ServerContext* ctx, const v1::ListHostStatusRequest* req,
                              v1::ListHostStatusResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    if (!s) return err;
    if (!s->log().IsLeader()) return s->NotLeader(ctx);
    s->sm().HostStatuses(resp);
    return grpc::Status::OK;
  }

  grpc::Status PurgeHostStatus(grpc::ServerContext* ctx, const v1::PurgeHostStatusRequest* req,
                               v1::PurgeHostStatusResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->PurgeHostStatus(ctx, req, resp) : err;
  }

  grpc::Status GetMessage(grpc::ServerContext* ctx, const v1::GetMessageRequest* req,
                          v1::GetMessageResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    if (!s) return err;
    if (QidGenerator::TimeOf(req->qid()) < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "'" + req->qid() + "' is not a queue id");
    }
    if (!s->log().IsLeader()) return s->NotLeader(ctx);
    auto env = s->sm().GetEnvelope(req->qid());
    if (!env.ok()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no message " + req->qid() + " on this shard");
    auto body = s->sm().GetBody(req->qid());
    if (body.ok()) {
      // The header block: up to the first empty line.
      const std::string& b = *body;
      size_t end = b.find("\r\n\r\n");
      resp->set_headers(end == std::string::npos ? b : b.substr(0, end + 2));
      resp->set_body_bytes(b.size());
    }
    for (uint32_t i = 0; i < env->nrcpts(); ++i) {
      auto r = s->sm().GetRecipient(req->qid(), i);
      if (r.ok()) *resp->mutable_message()->add_recipients() = std::move(r).value();
    }
    *resp->mutable_message()->mutable_envelope() = std::move(env).value();
    return grpc::Status::OK;
  }

  grpc::Status RunQueue(grpc::ServerContext* ctx, const v1::RunQueueRequest* req, v1::RunQueueResponse* resp) override {
    grpc::Status err;
    auto* s = Find(req->shard(), &err);
    return s ? s->RunQueue(ctx, req, resp) : err;
  }

 private:
  // Shard ids go up to 255 (a shard's Raft port is the node's + its id).
  static constexpr size_t kMaxShards = 256;

  Shard* Get(uint32_t shard) const { return shard < kMaxShards ? table_[shard].load() : nullptr; }
  void Install(std::unique_ptr<Shard> shard) {
    std::lock_guard lock(owned_mu_);
    const uint32_t id = shard->id();
    table_[id].store(shard.get());
    owned_.push_back(std::move(shard));
  }
  std::vector<Shard*> All() const {
    std::vector<Shard*> out;
    for (const auto& slot : table_) {
      if (Shard* s = slot.load()) out.push_back(s);
    }
    return out;
  }

  Shard* Find(uint32_t shard, grpc::Status* err) {
    Shard* s = Get(shard);
    if (!s && shard >= kMaxShards) {
      *err = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "no shard " + std::to_string(shard) + " (ids end at " + std::to_string(kMaxShards - 1) + ")");
    } else if (!s) {
      // A shard added online on other nodes (or not opened here yet): the
      // caller's router moves on to the next queue node, as for a replica
      // that knows no leader.
      *err = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "shard " + std::to_string(shard) + " has no replica on this node (mxctl cluster status)");
    }
    return s;
  }

  // The shard map, every second (watcher_): tells each shard here its state,
  // opens the groups of shards added online that list this node
  // (bootstrapping them with the listed replicas; a restart opens them again
  // the same way), makes a creating shard active once its replica here
  // leads it, and retires a drained one (MaybeRetire).
  void FollowShardMap(const std::vector<v1::ShardInfo>& map) {
    for (const auto& info : map) {
      if (info.shard() >= kMaxShards) continue;
      Shard* s = Get(info.shard());
      if (s) s->SetMapState(info.state(), info.move());
      if (info.state() == v1::ShardInfo::SHARD_RETIRED) continue;
      const bool listed =
          std::find(info.replicas().begin(), info.replicas().end(), config_.node_id) != info.replicas().end();
      if (!s && listed && (s = Open(info))) s->SetMapState(info.state(), info.move());
      if (s && info.state() == v1::ShardInfo::SHARD_DRAINING) MaybeRetire(*s);
      if (s && info.state() == v1::ShardInfo::SHARD_CREATING && s->IsLeader()) {
        v1::SetShardStateRequest req;
        req.set_shard(info.shard());
        req.set_state(v1::ShardInfo::SHARD_ACTIVE);
        v1::SetShardStateResponse resp;
        auto st = metadata_client_->Call(&v1::Metadata::Stub::SetShardState, req, &resp);
        if (st.ok()) log::Info("shard " + std::to_string(info.shard()) + " has a leader here: active");
      }
    }
  }

  // A draining shard whose replica here leads it retires once it has held
  // no message for kRetireAfter: long enough for any Enqueue admitted before
  // the leader learnt of the drain to have committed (and been counted).
  void MaybeRetire(Shard& s) {
    constexpr auto kRetireAfter = std::chrono::seconds(10);
    const auto now = std::chrono::steady_clock::now();
    auto& since = empty_since_[s.id()];
    if (!s.IsLeader() || s.messages() > 0) {
      since = {};
      return;
    }
    if (since == std::chrono::steady_clock::time_point{}) since = now;
    if (now - since < kRetireAfter) return;
    v1::SetShardStateRequest req;
    req.set_shard(s.id());
    req.set_state(v1::ShardInfo::SHARD_RETIRED);
    v1::SetShardStateResponse resp;
    if (auto st = metadata_client_->Call(&v1::Metadata::Stub::SetShardState, req, &resp); st.ok()) {
      s.SetMapState(v1::ShardInfo::SHARD_RETIRED, false);
      log::Info("shard " + std::to_string(s.id()) + " drained: retired (it takes no mail and no client asks it)");
    } else {
      log::Warn("shard " + std::to_string(s.id()) + " drained, but retiring it failed: " + st.error_message());
    }
  }

  // Moves the messages of draining shards led here (drain-shard --move) to
  // the active shards, batch after batch while there is progress.
  void MoveLoop() {
    std::map<uint32_t, std::string> cursor;  // per shard: where the last scan stopped
    for (;;) {
      bool progress = false;
      for (Shard* s : All()) {
        if (s->moving() && s->IsLeader()) progress = mover_->Pass(*s, &cursor[s->id()]) || progress;
      }
      std::unique_lock lock(mover_mu_);
      if (mover_cv_.wait_for(lock, progress ? std::chrono::milliseconds(0) : std::chrono::seconds(1),
                             [this] { return stopping_; })) {
        return;
      }
    }
  }

  Shard* Open(const v1::ShardInfo& info) {
    std::vector<uint64_t> replicas(info.replicas().begin(), info.replicas().end());
    auto shard = std::make_unique<Shard>(info.shard(), config_, clock_, peers_, &disk_, std::move(replicas));
    if (auto st = shard->Start(); !st.ok()) {
      log::Error("shard " + std::to_string(info.shard()) + ": cannot open it: " + st.ToString() + "; trying again");
      shard->Stop();
      return nullptr;
    }
    log::Info("shard " + std::to_string(info.shard()) + " opened (added online)");
    Shard* raw = shard.get();
    Install(std::move(shard));
    return raw;
  }

  // Bytes the node's shards hold in memtables, which a flush will write.
  uint64_t UnflushedBytes() const {
    uint64_t n = 0;
    for (Shard* s : All()) n += s->UnflushedBytes();
    return n;
  }

  QueueConfig config_;
  const Clock& clock_;
  std::map<uint64_t, std::string> peers_;  // node id -> gRPC address (queue.peers)
  DiskBudget disk_;
  std::array<std::atomic<Shard*>, kMaxShards> table_{};  // by shard id; never reset while running
  mutable std::mutex owned_mu_;
  std::vector<std::unique_ptr<Shard>> owned_;
  std::unique_ptr<MetadataService> metadata_;  // in front of shard kMetadataShard
  std::unique_ptr<QueueRouter> router_;        // the watcher's way to the metadata leader
  std::unique_ptr<MetadataClient> metadata_client_;
  std::map<uint32_t, std::chrono::steady_clock::time_point> empty_since_;  // the watcher's: draining and empty
  std::mutex mover_mu_;
  std::condition_variable mover_cv_;
  bool stopping_ = false;
  std::unique_ptr<ShardMapFollower> watcher_;  // every second: FollowShardMap
  std::unique_ptr<ShardMover> mover_;          // drain-shard --move, on mover_thread_
  std::thread mover_thread_;
};

}  // namespace

Result<std::unique_ptr<QueueNode>> StartQueueNode(const QueueConfig& config, const Clock& clock) {
  auto node = std::make_unique<QueueServiceImpl>(config, clock);
  if (auto st = node->Start(); !st.ok()) {
    node->Stop();
    return st;
  }
  return std::unique_ptr<QueueNode>(std::move(node));
}

}  // namespace mx::queue
