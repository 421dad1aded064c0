// service.cc — the mx.v1.Queue gRPC service: Enqueue, Pull leases, Ack, admin reads.
#include "mx/queue/service.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <filesystem>
#include <future>
#include <map>
#include <random>
#include <thread>

#include "mx/common/log.h"
#include "mx/common/qid.h"
#include "mx/queue/command_log.h"
#include "mx/queue/probe.h"
#include "mx/queue/state_machine.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::queue {
namespace {

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

class QueueServiceImpl final : public v1::Queue::Service, public QueueNode {
 public:
  QueueServiceImpl(const QueueConfig& config, const Clock& clock, std::unique_ptr<StateMachine> sm)
      : config_(config), clock_(clock), sm_(std::move(sm)) {
    LocalLogOptions lo;
    lo.max_commands = config.group_commit_max_commands;
    lo.max_bytes = config.group_commit_max_bytes;
    lo.linger = config.group_commit_linger;
    log_ = MakeLocalLog(*sm_, lo);
    ticker_ = std::thread([this] { TickLoop(); });
  }
  ~QueueServiceImpl() override { Stop(); }

  grpc::Service* service() override { return this; }

  void Stop() override {
    {
      std::lock_guard lock(pull_mu_);
      if (stopping_) return;
      stopping_ = true;
      pull_cv_.notify_all();
    }
    if (ticker_.joinable()) ticker_.join();
    log_->Stop();
  }

  grpc::Status Enqueue(grpc::ServerContext*, const v1::EnqueueRequest* req, v1::EnqueueResponse* resp) override {
    auto start = std::chrono::steady_clock::now();
    const auto& m = req->message();
    if (auto st = ValidateNewMessage(m); !st.ok()) {
      Probe::Get().EnqueueRejected();
      return ToGrpc(st);
    }
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    *cmd.mutable_enqueue()->mutable_message() = m;
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok()) {
      Probe::Get().EnqueueRejected();
      return ToGrpc(r.status);
    }
    SignalWork();
    resp->set_qid(m.envelope().qid());
    resp->set_commit_index(sm_->applied_index());
    Probe::Get().Enqueued(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return grpc::Status::OK;
  }

  grpc::Status Pull(grpc::ServerContext* ctx,
                    grpc::ServerReaderWriter<v1::PullResponse, v1::PullRequest>* stream) override {
    v1::PullRequest first;
    if (!stream->Read(&first)) return grpc::Status::OK;
    if (first.worker().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first PullRequest must name the worker");
    }
    const std::string worker = first.worker();
    // Leases of this worker's earlier incarnations (a crashed process) are void.
    if (auto slash = worker.rfind('/'); slash != std::string::npos && slash > 0) {
      v1::QueueCommand cmd;
      cmd.set_now_unix_us(clock_.NowUnixMicros());
      cmd.mutable_release()->set_owner_prefix(worker.substr(0, slash + 1));
      cmd.mutable_release()->set_keep_owner(worker);
      ApplyResult r = Commit(std::move(cmd));
      if (r.made_ready > 0) {
        log::Info("released " + std::to_string(r.made_ready) + " recipients leased by earlier incarnations of " +
                  worker.substr(0, slash));
        SignalWork();
      }
    }
    struct StreamState {
      uint64_t credits = 0;
      bool done = false;
    } st;
    st.credits = first.credits();
    log::Info("pull stream opened by worker " + worker);
    std::thread reader([&] {
      v1::PullRequest r;
      while (stream->Read(&r)) {
        std::lock_guard lock(pull_mu_);
        st.credits += r.credits();
        pull_cv_.notify_all();
      }
      std::lock_guard lock(pull_mu_);
      st.done = true;
      pull_cv_.notify_all();
    });
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
    log::Info("pull stream closed by worker " + worker);
    return grpc::Status::OK;
  }

  grpc::Status Ack(grpc::ServerContext*, const v1::AckRequest* req, v1::AckResponse*) override {
    int64_t now = clock_.NowUnixMicros();
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(now);
    auto* op = cmd.mutable_ack();
    for (const auto& r : req->results()) {
      if (r.qid().empty() || r.outcome() == v1::OUTCOME_UNSPECIFIED) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "every result needs a qid and an outcome");
      }
      auto* out = op->add_results();
      *out = r;
      if (r.outcome() == v1::OUTCOME_DEFERRED) {
        auto rc = sm_->GetRecipient(r.qid(), r.index());
        uint32_t attempts = rc.ok() ? rc->attempts() : 0;
        out->set_next_attempt_unix_us(now + Backoff(attempts));
      }
      Probe::Get().Acked(r.outcome());
    }
    for (const auto& d : req->dsns()) {
      if (auto st = ValidateNewMessage(d); !st.ok()) return ToGrpc(st);
      *op->add_dsns() = d;
    }
    ApplyResult r = Commit(std::move(cmd));
    if (!r.status.ok()) return ToGrpc(r.status);
    if (r.made_ready > 0) SignalWork();
    return grpc::Status::OK;
  }

  grpc::Status List(grpc::ServerContext*, const v1::ListRequest* req, v1::ListResponse* resp) override {
    sm_->List(*req, resp);
    return grpc::Status::OK;
  }

  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::GetStatsResponse* resp) override {
    sm_->Stats(resp);
    return grpc::Status::OK;
  }

  grpc::Status RecordStats(grpc::ServerContext*, const v1::RecordStatsRequest* req, v1::RecordStatsResponse*) override {
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    for (const auto& d : req->deltas()) {
      if (d.mailer().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "mailer is required");
      *cmd.mutable_stats()->add_deltas() = d;
    }
    return ToGrpc(Commit(std::move(cmd)).status);
  }

 private:
  Status ValidateNewMessage(const v1::NewMessage& m) const {
    const auto& env = m.envelope();
    if (QidGenerator::TimeOf(env.qid()) < 0) {
      return Status(Code::kInvalidArgument, "envelope.qid '" + env.qid() + "' is not a valid queue id");
    }
    if (m.recipients_size() == 0) return Status(Code::kInvalidArgument, "a message needs at least one recipient");
    for (const auto& r : m.recipients()) {
      if (r.address().empty()) return Status(Code::kInvalidArgument, "empty recipient address");
    }
    if (env.size() != m.body().size()) {
      return Status(Code::kInvalidArgument, "envelope.size does not match the body length");
    }
    return Status::Ok();
  }

  // Exponential retry delay after `attempts` earlier failures, with jitter,
  // never below min_backoff (MinQueueAge) nor above max_backoff.
  int64_t Backoff(uint32_t attempts) const {
    int64_t min = std::chrono::duration_cast<std::chrono::microseconds>(config_.min_backoff).count();
    int64_t max = std::chrono::duration_cast<std::chrono::microseconds>(config_.max_backoff).count();
    int64_t d = min;
    for (uint32_t i = 0; i < attempts && d < max; ++i) d *= 2;
    thread_local std::mt19937_64 rng{std::random_device{}()};
    d += static_cast<int64_t>(std::uniform_real_distribution<double>(0, 0.25)(rng) * static_cast<double>(d));
    return std::min(d, max);
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

  // Returns due deferred recipients and expired leases to ready; refreshes gauges.
  void TickLoop() {
    for (;;) {
      {
        std::unique_lock lock(pull_mu_);
        pull_cv_.wait_for(lock, config_.tick_interval, [&] { return stopping_; });
        if (stopping_) return;
      }
      int64_t now = clock_.NowUnixMicros();
      if (sm_->EarliestScheduled() <= now) {
        v1::QueueCommand cmd;
        cmd.set_now_unix_us(now);
        cmd.mutable_tick()->set_max_items(10000);
        ApplyResult r = Commit(std::move(cmd));
        if (r.status.ok() && r.made_ready > 0) SignalWork();
      }
      int64_t oldest = sm_->OldestArrival();
      Probe::Get().SetCounts(sm_->counts(), oldest > 0 ? (now - oldest) / 1'000'000 : 0);
    }
  }

  QueueConfig config_;
  const Clock& clock_;
  std::unique_ptr<StateMachine> sm_;
  std::unique_ptr<CommandLog> log_;
  std::mutex lease_mu_;
  std::mutex pull_mu_;
  std::condition_variable pull_cv_;
  uint64_t work_gen_ = 0;
  bool stopping_ = false;
  std::thread ticker_;
};

}  // namespace

Result<std::unique_ptr<QueueNode>> StartQueueNode(const QueueConfig& config, const Clock& clock) {
  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) return Status(Code::kUnavailable, "cannot create queue.data_dir " + config.data_dir + ": " + ec.message());
  StateMachineOptions so;
  so.dir = config.data_dir;
  so.sync = true;
  so.class_factor = config.class_factor;
  so.recipient_factor = config.recipient_factor;
  so.retry_factor = config.retry_factor;
  auto sm = StateMachine::Open(so);
  if (!sm.ok()) return sm.status();
  log::Info("queue shard " + std::to_string(config.shard) + " opened " + config.data_dir + " at applied index " +
            std::to_string((*sm)->applied_index()) + ", " + std::to_string((*sm)->counts().messages) + " messages");
  return std::unique_ptr<QueueNode>(new QueueServiceImpl(config, clock, std::move(sm).value()));
}

}  // namespace mx::queue
