// grpc_backend.cc — Enqueue over gRPC's callback API (never blocks the caller),
// with leader discovery and bounded retries.
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "mx/common/async_call.h"
#include "mx/common/log.h"
#include "mx/ingress/enqueue_backend.h"
#include "mx/queue/client.h"
#include "mx/queue/shard_map.h"
#include "mx/v1/queue.grpc.pb.h"
#include "probe.h"
#include "shard_spread.h"

namespace mx::ingress {
namespace {

using SysClock = std::chrono::system_clock;

// Longest single attempt: a leader that stopped answering (SIGSTOP, partition)
// is given up on after this and the next replica is asked.
constexpr auto kAttemptTimeout = std::chrono::seconds(3);

class GrpcEnqueueBackend final : public EnqueueBackend, public std::enable_shared_from_this<GrpcEnqueueBackend> {
 public:
  GrpcEnqueueBackend(const std::vector<std::string>& targets, uint32_t shards, std::chrono::milliseconds deadline)
      : router_(targets, shards), deadline_(deadline), follower_(router_, kShardMapInterval) {}

  void Enqueue(v1::NewMessage message, Done done) override {
    auto op = std::make_shared<Op>();
    op->done = std::move(done);
    op->deadline = SysClock::now() + deadline_;
    op->shard = ShardFor(message.envelope().qid());
    op->req.mutable_message()->Swap(&message);
    if (!batching_.load(std::memory_order_relaxed)) return Send(op);
    // First attempts go in batches: while kBatchesInFlight calls to the shard
    // are out, messages wait and then leave together (one RPC, and one Raft
    // entry on the leader more often than not). Retries go one by one.
    Batcher& b = BatcherFor(op->shard);
    std::vector<std::shared_ptr<Op>> ops;
    {
      std::lock_guard lock(b.mu);
      b.waiting.push_back(op);
      if (b.sending >= kBatchesInFlight) return;
      ops = TakeBatch(b);
    }
    SendBatch(op->shard, std::move(ops));
  }

  // The first shard from the current run's (ShardSpread) that takes new mail
  // and is not avoided (no leader lately); failing that, the first that
  // takes new mail.
  uint32_t ShardFor(const std::string& /*qid*/) const override {
    const uint32_t n = std::max(1u, router_.shards());
    const uint32_t start = spread_.Next(n, std::chrono::steady_clock::now());
    const uint32_t first = NextAccepting(start == 0 ? n - 1 : start - 1);
    uint32_t s = first;
    for (uint32_t i = 0; i < n; ++i, s = NextAccepting(s)) {
      if (router_.Healthy(s)) return s;
    }
    return first;
  }

  void RecordStats(const v1::MailerStats& delta) override {
    auto call = AsyncCall<v1::RecordStatsRequest, v1::RecordStatsResponse>::WithDeadline(deadline_);
    *call->req.add_deltas() = delta;
    auto target = router_.Leader(0);
    target.stub->async()->RecordStats(
        &call->ctx, &call->req, &call->resp,
        [self = shared_from_this(), call, address = target.address](const grpc::Status& s) {
          self->router_.Observe(0, address, call->ctx, s);
          if (!s.ok()) log::Warn("mailstats report failed: " + s.error_message());
        });
  }

  void RunQueue(const std::string& domain, std::function<void(Result<uint64_t>)> done) override {
    auto run = std::make_shared<Run>();
    run->done = std::move(done);
    std::vector<uint32_t> shards;
    for (uint32_t shard = 0; shard < router_.shards(); ++shard) {
      if (router_.Serving(shard)) shards.push_back(shard);
    }
    run->pending = static_cast<uint32_t>(shards.size());
    run->filter.set_domain(domain);
    if (shards.empty()) return run->done(uint64_t{0});
    for (uint32_t shard : shards) SendRun(run, shard, 0);
  }

 private:
  // How often the shard map is read (shards added, drained, retired).
  static constexpr auto kShardMapInterval = std::chrono::seconds(2);
  // EnqueueBatch: calls out per shard before messages wait for the next one,
  // and the most one call carries.
  static constexpr int kBatchesInFlight = 2;
  static constexpr size_t kMaxBatchMessages = 128;
  static constexpr size_t kMaxBatchBytes = 8u << 20;
  static constexpr uint32_t kMaxShards = 256;  // shard ids are 0..255

  // The shard after `after` (cyclically) that takes new mail; `after + 1`
  // when none does (the map says no shard is active: let the queue answer).
  uint32_t NextAccepting(uint32_t after) const {
    const uint32_t n = std::max(1u, router_.shards());  // at least the configured shards
    for (uint32_t i = 1; i <= n; ++i) {
      const uint32_t s = (after + i) % n;
      if (router_.Accepting(s)) return s;
    }
    return (after + 1) % n;
  }

  // One queue run over every shard; done fires when the last shard answered.
  struct Run {
    std::mutex mu;
    v1::RunOp filter;
    uint32_t pending = 0;
    uint64_t made_ready = 0;
    Status error;
    std::function<void(Result<uint64_t>)> done;
  };

  void SendRun(const std::shared_ptr<Run>& run, uint32_t shard, int attempt) {
    auto call = AsyncCall<v1::RunQueueRequest, v1::RunQueueResponse>::WithDeadline(std::chrono::seconds(5));
    call->req.set_shard(shard);
    *call->req.mutable_filter() = run->filter;
    auto target = router_.Leader(shard);
    target.stub->async()->RunQueue(
        &call->ctx, &call->req, &call->resp,
        [self = shared_from_this(), call, run, shard, attempt, address = target.address](const grpc::Status& s) {
          // A queue run is idempotent: retrying on the leader named in the answer is safe.
          if (self->router_.Observe(shard, address, call->ctx, s) && attempt < 3) {
            return self->SendRun(run, shard, attempt + 1);
          }
          std::unique_lock lock(run->mu);
          if (s.ok())
            run->made_ready += call->resp.made_ready();
          else if (run->error.ok())
            run->error =
                Status(static_cast<Code>(s.error_code()), "shard " + std::to_string(shard) + ": " + s.error_message());
          if (--run->pending > 0) return;
          lock.unlock();
          if (run->error.ok())
            run->done(run->made_ready);
          else
            run->done(run->error);
        });
  }

  struct Op {
    v1::EnqueueRequest req;
    v1::EnqueueResponse resp;
    std::unique_ptr<grpc::ClientContext> ctx;
    Done done;
    SysClock::time_point deadline;
    uint32_t shard = 0;
    std::string address;
    int failures = 0;        // consecutive failures without a leader hint
    bool ambiguous = false;  // an attempt may have reached the log: stay on this shard
    grpc::Alarm alarm;
  };

  struct Batcher {
    std::mutex mu;
    std::deque<std::shared_ptr<Op>> waiting;
    int sending = 0;  // EnqueueBatch calls out
  };
  struct Batch {
    v1::EnqueueBatchRequest req;
    v1::EnqueueBatchResponse resp;
    grpc::ClientContext ctx;
    std::vector<std::shared_ptr<Op>> ops;
    std::string address;
  };

  Batcher& BatcherFor(uint32_t shard) { return batchers_[shard % kMaxShards]; }

  // Under b.mu: the oldest waiting messages that fit in one call; counts the call.
  static std::vector<std::shared_ptr<Op>> TakeBatch(Batcher& b) {
    std::vector<std::shared_ptr<Op>> ops;
    size_t bytes = 0;
    while (!b.waiting.empty() && ops.size() < kMaxBatchMessages) {
      const size_t size = b.waiting.front()->req.message().body().size();
      if (!ops.empty() && bytes + size > kMaxBatchBytes) break;
      bytes += size;
      ops.push_back(std::move(b.waiting.front()));
      b.waiting.pop_front();
    }
    if (!ops.empty()) ++b.sending;
    return ops;
  }

  void SendBatch(uint32_t shard, std::vector<std::shared_ptr<Op>> ops) {
    auto batch = std::make_shared<Batch>();
    auto target = router_.Leader(shard);
    batch->address = target.address;
    batch->req.set_shard(shard);
    auto deadline = SysClock::now() + kAttemptTimeout;
    for (auto& op : ops) {
      deadline = std::min(deadline, op->deadline);
      op->address = target.address;
      batch->req.add_messages()->Swap(op->req.mutable_message());
    }
    batch->ctx.set_deadline(deadline);
    batch->ops = std::move(ops);
    Probe::Get().EnqueueBatch(batch->ops.size());
    auto self = shared_from_this();
    target.stub->async()->EnqueueBatch(
        &batch->ctx, &batch->req, &batch->resp,
        [self, batch, shard](const grpc::Status& s) { self->BatchDone(shard, batch, s); });
  }

  void BatchDone(uint32_t shard, const std::shared_ptr<Batch>& batch, const grpc::Status& s) {
    // The messages go back to their ops first: a retry sends them one by one.
    for (size_t i = 0; i < batch->ops.size(); ++i) {
      batch->ops[i]->req.mutable_message()->Swap(batch->req.mutable_messages(static_cast<int>(i)));
    }
    if (s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      // A queue node from before EnqueueBatch (a rolling upgrade): single calls from now on.
      log::Warn("queue at " + batch->address + " has no EnqueueBatch; enqueueing one message per call");
      batching_ = false;
      for (auto& op : batch->ops) Send(op);
    } else if (!s.ok() || batch->resp.results_size() != static_cast<int>(batch->ops.size())) {
      const grpc::Status st = s.ok()
                                  ? grpc::Status(grpc::StatusCode::INTERNAL,
                                                 "EnqueueBatch answered " + std::to_string(batch->resp.results_size()) +
                                                     " results for " + std::to_string(batch->ops.size()) + " messages")
                                  : s;
      for (auto& op : batch->ops) Completed(op, st, batch->ctx, /*rejected=*/false);
    } else {
      for (size_t i = 0; i < batch->ops.size(); ++i) {
        const auto& r = batch->resp.results(static_cast<int>(i));
        Completed(batch->ops[i], grpc::Status(static_cast<grpc::StatusCode>(r.code()), r.message()), batch->ctx,
                  r.rejected());
      }
    }
    Batcher& b = BatcherFor(shard);
    std::vector<std::shared_ptr<Op>> next;
    {
      std::lock_guard lock(b.mu);
      --b.sending;
      next = TakeBatch(b);
    }
    if (!next.empty()) SendBatch(shard, std::move(next));
  }

  void Send(const std::shared_ptr<Op>& op) {
    auto target = router_.Leader(op->shard);
    op->address = target.address;
    op->ctx = std::make_unique<grpc::ClientContext>();
    op->ctx->set_deadline(std::min(op->deadline, SysClock::now() + kAttemptTimeout));
    op->req.set_shard(op->shard);
    auto self = shared_from_this();
    target.stub->async()->Enqueue(op->ctx.get(), &op->req, &op->resp,
                                  [self, op](const grpc::Status& s) { self->Completed(op, s, *op->ctx, false); });
  }

  // One attempt's outcome: s from the call (ctx), or from the message's
  // EnqueueResult in a batch (rejected: refused before it was proposed).
  void Completed(const std::shared_ptr<Op>& op, const grpc::Status& s, const grpc::ClientContext& ctx, bool rejected) {
    // ALREADY_EXISTS: an earlier attempt committed after all (its answer was lost).
    if (s.ok() || s.error_code() == grpc::StatusCode::ALREADY_EXISTS) return op->done(Status::Ok());
    const bool new_leader = router_.Observe(op->shard, op->address, ctx, s);
    if (!rejected && !queue::CertainlyNotApplied(ctx, s)) op->ambiguous = true;
    // A retry of the same qid is safe (ALREADY_EXISTS if it committed), so any
    // failure of the transport or of the replica (CANCELLED when it shuts down
    // mid-call) is retried; verdicts on the message itself are not.
    const auto code = s.error_code();
    const bool retryable = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                           code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::ABORTED;
    const auto now = SysClock::now();
    if (!retryable || now >= op->deadline) {
      return op->done(Status(static_cast<Code>(s.error_code()), s.error_message()));
    }
    if (new_leader) {
      op->failures = 0;
      return Send(op);
    }
    // No leader known here: after two failures on one shard, try the next one
    // (its leader may be fine) — but only while no attempt could have reached
    // this shard's log: a message that may be committed here is retried here
    // (ALREADY_EXISTS then confirms it), never duplicated on another shard.
    // Back off meanwhile so an election can finish.
    if (++op->failures >= 2 && router_.shards() > 1 && !op->ambiguous) {
      op->shard = NextAccepting(op->shard);
      op->failures = 0;
    }
    auto backoff = std::chrono::milliseconds(std::min(1000, 50 << std::min(op->failures, 4)));
    auto self = shared_from_this();
    op->alarm.Set(std::min(op->deadline, now + backoff), [self, op](bool fired) {
      if (fired) return self->Send(op);
      op->done(Status(Code::kUnavailable, "enqueue cancelled"));
    });
  }

  queue::QueueRouter router_;
  std::chrono::milliseconds deadline_;
  std::atomic<bool> batching_{true};
  mutable ShardSpread spread_{std::random_device{}()};  // ingresses start their runs on different shards
  std::array<Batcher, kMaxShards> batchers_;            // one per shard id, no lock to find it
  queue::ShardMapFollower follower_;                    // after router_, which it updates
};

}  // namespace

std::shared_ptr<EnqueueBackend> MakeGrpcEnqueueBackend(const std::vector<std::string>& targets, uint32_t shards,
                                                       std::chrono::milliseconds deadline) {
  return std::make_shared<GrpcEnqueueBackend>(targets, shards, deadline);
}

}  // namespace mx::ingress
