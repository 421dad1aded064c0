// raft_log.cc — RaftLog: libraft + libuv on a dedicated thread: start,
// proposals (group commit), status, close. Membership: raft_membership.cc.
#include "raft_log_impl.h"

#include <filesystem>

#include "mx/common/log.h"
#include "mx/common/thread_name.h"
#include "probe.h"

namespace mx::queue::raft {
namespace {

const char* RoleName(int role) {
  switch (role) {
    case RAFT_VOTER: return "voter";
    case RAFT_STANDBY: return "standby";
    case RAFT_SPARE: return "spare";
  }
  return "unknown";
}

// RaftLogs running in this process (shared_group_commit).
std::atomic<int> g_running_logs{0};

const char* StateName(int state) {
  switch (state) {
    case RAFT_LEADER: return "leader";
    case RAFT_FOLLOWER: return "follower";
    case RAFT_CANDIDATE: return "candidate";
  }
  return "unavailable";
}

}  // namespace

bool IsStaleAppendBeforeLog(const raft_message& m, const raft_log& log) {
  return m.type == RAFT_IO_APPEND_ENTRIES && m.append_entries.prev_log_index == 0 && m.append_entries.n_entries > 0 &&
         log.offset > 0;
}

RaftLogImpl::RaftLogImpl(const RaftLogOptions& options, StateMachine& sm, SnapshotFetcher fetch)
    : options_(options),
      sm_(sm),
      fsm_(sm, QueueFsm::Options{options.shard, options.node_id, options.grpc_address, options.snapshot_dir, 2},
           std::move(fetch)),
      tag_("shard " + std::to_string(options.shard) + ": ") {}

Status RaftLogImpl::Start() {
  std::error_code ec;
  std::filesystem::create_directories(options_.dir, ec);
  if (ec) return Status(Code::kUnavailable, "cannot create " + options_.dir + ": " + ec.message());
  if (int rv = uv_loop_init(&loop_); rv != 0) return Status(Code::kInternal, "uv_loop_init failed");
  loop_ready_ = true;
  uv_async_init(&loop_, &wake_, &RaftLogImpl::OnWake);
  wake_.data = this;
  uv_timer_init(&loop_, &poll_);
  poll_.data = this;
  uv_timer_init(&loop_, &linger_);
  linger_.data = this;
  const std::string bind = options_.raft_bind.empty() ? options_.raft_address : options_.raft_bind;
  transport_ready_ = true;
  if (int rv = transport_.Init(&loop_, bind); rv != 0) return Fail("Raft transport (bind address " + bind + ")", rv);
  if (int rv = raft_uv_init(&io_, &loop_, options_.dir.c_str(), transport_.transport()); rv != 0) {
    return Status(Code::kUnavailable, tag_ + "raft log " + options_.dir + ": " + io_.errmsg);
  }
  io_ready_ = true;
  // libraft 0.15's libuv io implements async_work (a version-2 field) yet
  // reports version 1, and raft_init refuses an FSM with snapshot_async on
  // a version-1 io: checked on Debian 12's libraft-dev 0.15.0.
  if (io_.version < 2 && io_.async_work != nullptr) io_.version = 2;
  fsm_.UseAsyncSnapshots(io_.version >= 2 && io_.async_work != nullptr);
  io_start_ = io_.start;
  io_.start = &RaftLogImpl::OnIoStart;
  raft_uv_set_connect_retry_delay(&io_, 200);
  raft_uv_set_segment_size(&io_, options_.segment_size);
  if (int rv = raft_init(&raft_, &io_, fsm_.fsm(), options_.node_id, options_.raft_address.c_str()); rv != 0) {
    return Fail("raft_init", rv);
  }
  raft_ready_ = true;
  raft_.data = this;
  fsm_.Attach(&raft_);
  fsm_.result_sink = [this](uint64_t index) -> std::vector<ApplyResult>* {
    auto it = inflight_.find(index);
    return it == inflight_.end() ? nullptr : &it->second->results;
  };
  raft_set_election_timeout(&raft_, options_.election_timeout_ms);
  raft_set_heartbeat_timeout(&raft_, options_.heartbeat_timeout_ms);
  raft_set_snapshot_threshold(&raft_, options_.snapshot_threshold);
  raft_set_snapshot_trailing(&raft_, options_.snapshot_trailing);
  raft_set_pre_vote(&raft_, true);
  if (!options_.bootstrap.empty()) {
    raft_configuration conf;
    raft_configuration_init(&conf);
    for (const auto& p : options_.bootstrap) {
      if (int rv = raft_configuration_add(&conf, p.id, p.raft_address.c_str(), RAFT_VOTER); rv != 0) {
        raft_configuration_close(&conf);
        return Fail("bootstrap configuration", rv);
      }
    }
    int rv = raft_bootstrap(&raft_, &conf);
    raft_configuration_close(&conf);
    if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) return Fail("raft_bootstrap", rv);
    if (rv == 0) log::Info(tag_ + "bootstrapped a new Raft group of " + std::to_string(options_.bootstrap.size()));
  }
  if (int rv = raft_start(&raft_); rv != 0) {
    return Fail("start (listening on " + bind + ", log in " + options_.dir + ")", rv);
  }
  started_ = true;
  g_running_logs.fetch_add(1, std::memory_order_relaxed);
  counted_ = true;
  uv_timer_start(&poll_, &RaftLogImpl::OnPoll, 0, 50);
  RefreshStatus();
  thread_ = std::thread([this] {
    SetThreadName("mx-raft-" + std::to_string(options_.shard));
    uv_run(&loop_, UV_RUN_DEFAULT);
  });
  return Status::Ok();
}

int RaftLogImpl::OnIoStart(raft_io* io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv) {
  auto* self = static_cast<RaftLogImpl*>(static_cast<struct ::raft*>(io->data)->data);
  self->recv_ = recv;
  return self->io_start_(io, msecs, tick, &RaftLogImpl::OnReceive);
}

void RaftLogImpl::OnReceive(raft_io* io, raft_message* m) {
  auto* self = static_cast<RaftLogImpl*>(static_cast<struct ::raft*>(io->data)->data);
  if (!IsStaleAppendBeforeLog(*m, self->raft_.log)) return self->recv_(io, m);
  // The receiver owns the entries: one array, and the batches they point into.
  const raft_append_entries& a = m->append_entries;
  void* freed = nullptr;
  for (unsigned i = 0; i < a.n_entries; ++i) {
    if (a.entries[i].batch != nullptr && a.entries[i].batch != freed) {
      freed = a.entries[i].batch;
      raft_free(freed);
    } else if (a.entries[i].batch == nullptr) {
      raft_free(a.entries[i].buf.base);
    }
  }
  raft_free(a.entries);
  Probe::Get().StaleAppendDropped(self->options_.shard);
  if (self->stale_dropped_++ % 100 == 0) {
    log::Info(self->tag_ + "dropped a stale AppendEntries from node " + std::to_string(m->server_id) + " (term " +
              std::to_string(a.term) + ", " + std::to_string(a.n_entries) +
              " entries from index 1; this log starts at " + std::to_string(self->raft_.log.offset + 1) + "); " +
              std::to_string(self->stale_dropped_) + " dropped so far");
  }
}

void RaftLogImpl::Propose(v1::QueueCommand cmd, Done done) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      size_t bytes = cmd.ByteSizeLong();
      pending_.push_back(Pending{std::move(cmd), std::move(done), bytes});
      uv_async_send(&wake_);
      return;
    }
  }
  ApplyResult r;
  r.status = Status(Code::kUnavailable, "queue is shutting down");
  done(r);
}

void RaftLogImpl::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  fsm_.stopping.store(true);  // a failing apply blocks the loop: let it go
  if (thread_.joinable()) {
    uv_async_send(&wake_);
    thread_.join();
  } else if (loop_ready_) {
    // Start() failed part way: close what was opened, on this thread.
    BeginClose();
    uv_run(&loop_, UV_RUN_DEFAULT);
  }
  if (loop_ready_) uv_loop_close(&loop_);
  loop_ready_ = false;
  if (counted_) g_running_logs.fetch_sub(1, std::memory_order_relaxed);
  counted_ = false;
  FailAll(Status(Code::kUnavailable, "queue is shutting down"));
}

v1::ReplicaStatus RaftLogImpl::GetStatus() const {
  std::lock_guard lock(status_mu_);
  return status_;
}

void RaftLogImpl::OnLeadershipChange(std::function<void(bool)> fn) {
  std::lock_guard lock(mu_);
  on_leadership_ = std::move(fn);
}

Status RaftLogImpl::Fail(const std::string& what, int rv) {
  std::string detail = raft_ready_ ? raft_errmsg(&raft_) : "";
  if (detail.empty() && io_ready_) detail = io_.errmsg;
  return Status(Code::kUnavailable,
                tag_ + what + ": " + raft_strerror(rv) + (detail.empty() ? "" : " (" + detail + ")"));
}

bool RaftLogImpl::RunOnLoop(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  if (stopping_) return false;
  tasks_.push_back(std::move(fn));
  uv_async_send(&wake_);
  return true;
}

void RaftLogImpl::OnWake(uv_async_t* h) {
  auto* self = static_cast<RaftLogImpl*>(h->data);
  std::vector<std::function<void()>> tasks;
  bool stopping;
  {
    std::lock_guard lock(self->mu_);
    tasks.swap(self->tasks_);
    stopping = self->stopping_;
  }
  if (!self->closing_) {
    for (auto& t : tasks) t();  // before closing: raft_close cancels what they start
  }
  if (stopping) return self->BeginClose();
  self->Flush(false);
}

void RaftLogImpl::OnPoll(uv_timer_t* h) {
  static_cast<RaftLogImpl*>(h->data)->RefreshStatus();
}
void RaftLogImpl::OnLinger(uv_timer_t* h) {
  static_cast<RaftLogImpl*>(h->data)->Flush(true);
}

// Turns waiting proposals into Raft entries (loop thread).
void RaftLogImpl::Flush(bool linger_expired) {
  if (closing_) return;
  if (raft_state(&raft_) != RAFT_LEADER) {
    FailPending(NotLeader());
    return;
  }
  for (;;) {
    std::vector<Pending> batch;
    {
      std::lock_guard lock(mu_);
      const auto [linger, max_inflight] =
          EffectiveGroupCommit(options_, g_running_logs.load(std::memory_order_relaxed));
      if (pending_.empty() || inflight_.size() >= max_inflight) return;
      if (linger.count() > 0 && !linger_expired && pending_.size() < options_.max_batch_commands) {
        if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&linger_))) {
          uv_timer_start(&linger_, &RaftLogImpl::OnLinger,
                         std::max<uint64_t>(1, static_cast<uint64_t>(linger.count() / 1000)), 0);
        }
        return;
      }
      size_t bytes = 0;
      while (!pending_.empty() && batch.size() < options_.max_batch_commands &&
             (batch.empty() || bytes + pending_.front().bytes <= options_.max_batch_bytes)) {
        bytes += pending_.front().bytes;
        batch.push_back(std::move(pending_.front()));
        pending_.pop_front();
      }
    }
    linger_expired = false;
    uv_timer_stop(&linger_);
    v1::QueueEntry entry;
    auto f = std::make_unique<Inflight>();
    f->self = this;
    f->req.data = f.get();
    f->start = std::chrono::steady_clock::now();
    for (auto& p : batch) {
      entry.add_commands()->Swap(&p.cmd);
      f->dones.push_back(std::move(p.done));
    }
    raft_buffer buf = QueueFsm::Encode(entry);
    if (!buf.base) {
      FailDones(f->dones, Status(Code::kResourceExhausted, "out of memory"));
      continue;
    }
    int rv = raft_apply(&raft_, &f->req, &buf, 1, &RaftLogImpl::OnApplied);
    if (rv != 0) {
      raft_free(buf.base);
      FailDones(f->dones, rv == RAFT_NOTLEADER ? NotLeader() : Fail("propose", rv));
      continue;
    }
    f->index = f->req.index ? f->req.index : raft_last_index(&raft_);
    Probe::Get().Batched(batch.size());
    auto* raw = f.release();
    inflight_[raw->index] = raw;
  }
}

void RaftLogImpl::OnApplied(struct raft_apply* req, int status, void*) {
  auto* f = static_cast<Inflight*>(req->data);
  auto* self = f->self;
  self->inflight_.erase(f->index);
  if (status == 0) {
    Probe::Get().EntryCommitted(std::chrono::duration<double>(std::chrono::steady_clock::now() - f->start).count());
    for (size_t i = 0; i < f->dones.size(); ++i) {
      f->dones[i](i < f->results.size() ? f->results[i] : ApplyResult{});
    }
  } else {
    // Leadership was lost before commit: the entry may still commit under
    // the next leader, so the caller must treat the outcome as unknown.
    self->FailDones(f->dones, Status(Code::kUnavailable, self->tag_ + "leadership lost before commit (" +
                                                             raft_strerror(status) + "); outcome unknown"));
  }
  delete f;
  if (status == 0) {
    self->Flush(false);
  } else {
    // libraft fails the uncommitted entries while it steps down, before its
    // state says so and after the leader's bookkeeping is gone: raft_apply
    // from here reads freed state (ASan: SEGV in raft_apply when a stopped
    // leader was replaced). Flush from the loop instead, where the new state
    // fails the waiting proposals with NotLeader.
    uv_async_send(&self->wake_);
  }
}

void RaftLogImpl::FailDones(std::vector<Done>& dones, const Status& st) {
  ApplyResult r;
  r.status = st;
  for (auto& d : dones) d(r);
  dones.clear();
}

void RaftLogImpl::FailPending(const Status& st) {
  std::deque<Pending> pending;
  {
    std::lock_guard lock(mu_);
    pending.swap(pending_);
  }
  ApplyResult r;
  r.status = st;
  for (auto& p : pending) p.done(r);
}

void RaftLogImpl::FailAll(const Status& st) {
  FailPending(st);
  for (auto& [index, f] : inflight_) {
    FailDones(f->dones, st);
    delete f;
  }
  inflight_.clear();
}

void RaftLogImpl::RefreshStatus() {
  if (closing_) return;
  int state = raft_state(&raft_);
  raft_id leader_id = 0;
  const char* leader_address = nullptr;
  raft_leader(&raft_, &leader_id, &leader_address);
  v1::ReplicaStatus s;
  s.set_shard(options_.shard);
  s.set_node_id(options_.node_id);
  s.set_role(StateName(state));
  s.set_term(raft_.current_term);
  s.set_leader_id(leader_id);
  s.set_commit_index(raft_.commit_index);
  s.set_applied_index(raft_last_applied(&raft_));
  s.set_last_index(raft_last_index(&raft_));
  s.set_snapshot_index(fsm_.last_snapshot_index());
  s.set_messages(sm_.counts().messages);
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    const auto& srv = raft_.configuration.servers[i];
    auto* m = s.add_members();
    m->set_id(srv.id);
    m->set_raft_address(srv.address);
    m->set_role(RoleName(srv.role));
    if (state == RAFT_LEADER && raft_.leader_state.progress) {
      const bool self = srv.id == options_.node_id;
      m->set_match_index(self ? raft_last_index(&raft_) : raft_.leader_state.progress[i].match_index);
      m->set_answering(self || Answering(srv.id, i));
    }
  }
  {
    std::lock_guard lock(status_mu_);
    status_ = std::move(s);
  }
  bool leader = state == RAFT_LEADER;
  leader_id_ = leader_id;
  CheckCatchUp();
  if (leader && ++polls_since_balance_ >= kBalanceEveryPolls) {
    polls_since_balance_ = 0;
    MaybeHandOver();
  }
  Probe::Get().SetRaft(options_.shard, leader, raft_.current_term, raft_.commit_index, raft_last_applied(&raft_));
  if (leader != leader_.exchange(leader)) {
    log::Info(tag_ + (leader ? "became leader in term " : "lost leadership in term ") +
              std::to_string(raft_.current_term));
    Probe::Get().LeaderChanged(options_.shard);
    if (leader) {
      // Commit an entry of the new term at once, so entries of earlier terms
      // are known committed and applied here before we schedule from them.
      using Barrier = struct raft_barrier;
      auto* b = new Barrier{};
      b->data = this;
      if (raft_barrier(&raft_, b, [](Barrier* req, int) { delete req; }) != 0) delete b;
    }
    std::function<void(bool)> fn;
    {
      std::lock_guard lock(mu_);
      fn = on_leadership_;
    }
    if (fn) fn(leader);
    if (!leader) FailPending(NotLeader());
  }
}

void RaftLogImpl::BeginClose() {
  if (closing_) return;
  closing_ = true;
  leader_ = false;
  if (catch_up_ && !catch_up_->promoting) FinishCatchUp(Status(Code::kUnavailable, tag_ + "shutting down"));
  FailPending(Status(Code::kUnavailable, "queue is shutting down"));
  uv_timer_stop(&poll_);
  uv_timer_stop(&linger_);
  if (raft_ready_) {
    raft_close(&raft_, &RaftLogImpl::OnRaftClosed);
  } else {
    CloseHandles();
  }
}

void RaftLogImpl::OnRaftClosed(struct ::raft* r) {
  auto* self = static_cast<RaftLogImpl*>(r->data);
  self->CloseHandles();
}

void RaftLogImpl::CloseHandles() {
  if (io_ready_) raft_uv_close(&io_);
  if (transport_ready_) transport_.Release();
  io_ready_ = transport_ready_ = false;
  for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&wake_), reinterpret_cast<uv_handle_t*>(&poll_),
                         reinterpret_cast<uv_handle_t*>(&linger_)}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

}  // namespace mx::queue::raft

namespace mx::queue {

GroupCommit EffectiveGroupCommit(const RaftLogOptions& o, int running) {
  if (o.shared_group_commit && running > 1) return {kSharedLinger, 1};
  return {o.linger, o.max_inflight_entries};
}

Result<std::unique_ptr<RaftLog>> StartRaftLog(const RaftLogOptions& options, StateMachine& sm, SnapshotFetcher fetch) {
  auto log = std::make_unique<raft::RaftLogImpl>(options, sm, std::move(fetch));
  if (auto st = log->Start(); !st.ok()) {
    log->Stop();
    return st;
  }
  return std::unique_ptr<RaftLog>(std::move(log));
}

}  // namespace mx::queue
