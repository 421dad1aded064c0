// ack_sender.cc — Ack coalescing, retries and splitting.
#include "ack_sender.h"

#include "mx/common/log.h"
#include "probe.h"

namespace mx::delivery {

// An Ack request and its retries: the leases live in the replicated state,
// so a new leader accepts acks for leases its predecessor handed out.
struct AckSender::Op {
  std::vector<v1::AckRequest> parts;  // the deliveries' own acks, merged into req
  std::shared_ptr<v1::AckRequest> req;
  uint32_t shard = 0;
  std::chrono::system_clock::time_point deadline;
  grpc::Alarm alarm;
  int attempts = 0;
};

AckSender::AckSender(QueueLink& link, std::string worker_id, Credits credits)
    : link_(link), worker_id_(std::move(worker_id)), credits_(std::move(credits)) {
  // Every possible shard id (shards are added while running).
  for (uint32_t i = 0; i < kMaxShards; ++i) shards_.push_back(std::make_unique<ShardQueue>());
}

AckSender::~AckSender() {
  Stop();
  WaitIdle(std::chrono::seconds(35));
}

void AckSender::Send(uint32_t shard, v1::AckRequest ack) {
  ack.set_shard(shard);
  {
    std::lock_guard lock(mu_);
    ++in_flight_;
  }
  {
    std::lock_guard lock(shards_[shard]->mu);
    shards_[shard]->waiting.push_back(std::move(ack));
  }
  SendWaiting(shard);
}

void AckSender::Stop() {
  stopping_ = true;
}

bool AckSender::WaitIdle(std::chrono::milliseconds max) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, max, [&] { return in_flight_ == 0; });
}

// Sends what waits for the shard as one Ack, unless enough are outstanding
// (their completion sends the rest).
void AckSender::SendWaiting(uint32_t shard) {
  auto op = std::make_shared<Op>();
  ShardQueue& q = *shards_[shard];
  {
    std::lock_guard lock(q.mu);
    if (q.waiting.empty() || q.sending >= kInFlightPerShard) return;
    size_t bytes = 0;
    while (!q.waiting.empty() && op->parts.size() < kMaxPerRequest) {
      const size_t b = q.waiting.front().ByteSizeLong();
      if (!op->parts.empty() && bytes + b > kMaxRequestBytes) break;
      bytes += b;
      op->parts.push_back(std::move(q.waiting.front()));
      q.waiting.pop_front();
    }
    ++q.sending;
  }
  op->shard = shard;
  op->deadline = std::chrono::system_clock::now() + kGiveUpAfter;
  if (op->parts.size() == 1) {
    op->req = std::make_shared<v1::AckRequest>(std::move(op->parts.front()));  // nothing to split if refused
  } else {
    op->req = std::make_shared<v1::AckRequest>();
    op->req->set_worker(worker_id_);
    op->req->set_shard(shard);
    for (const auto& part : op->parts) {
      op->req->mutable_results()->MergeFrom(part.results());
      op->req->mutable_dsns()->MergeFrom(part.dsns());
      op->req->mutable_hosts()->MergeFrom(part.hosts());
    }
  }
  Try(op);
}

void AckSender::Try(const std::shared_ptr<Op>& op) {
  ++op->attempts;
  const auto deadline = std::min(op->deadline, std::chrono::system_clock::now() + std::chrono::seconds(5));
  link_.Ack(op->shard, op->req, deadline,
            [this, op](const grpc::Status& s, bool new_leader) { Done(op, s, new_leader); });
}

void AckSender::Done(const std::shared_ptr<Op>& op, const grpc::Status& s, bool new_leader) {
  // Acks are idempotent (a recipient already final ignores a second one), so
  // anything but a verdict on the request itself is worth another try:
  // e.g. CANCELLED from a queue replica shutting down mid-call.
  const auto code = s.error_code();
  const bool retryable = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::ABORTED ||
                         code == grpc::StatusCode::UNKNOWN || code == grpc::StatusCode::INTERNAL;
  const auto now = std::chrono::system_clock::now();
  if (!s.ok() && retryable && !stopping_ && now < op->deadline) {
    if (new_leader) return Try(op);
    op->alarm.Set(std::min(op->deadline, now + std::chrono::milliseconds(100 << std::min(op->attempts, 4))),
                  [this, op](bool fired) {
                    if (fired) return Try(op);
                    Done(op, grpc::Status(grpc::StatusCode::CANCELLED, "ack retry cancelled"), false);
                  });
    return;
  }
  if (!s.ok() && op->parts.size() > 1 && !retryable) {
    // A verdict on the merged request: each delivery's ack goes on its own,
    // so one bad part does not cost the others their outcome.
    log::Warn("ack of " + std::to_string(op->parts.size()) + " deliveries to shard " + std::to_string(op->shard) +
              " refused (" + s.error_message() + "); sending them one by one");
    {
      std::lock_guard lock(shards_[op->shard]->mu);
      auto& waiting = shards_[op->shard]->waiting;
      for (auto it = op->parts.rbegin(); it != op->parts.rend(); ++it) waiting.push_front(std::move(*it));
    }
    Split(op->shard, op->parts.size());
    return;
  }
  if (!s.ok()) {
    Probe::Get().AckFailed();
    log::Warn("ack to shard " + std::to_string(op->shard) + " failed (" + s.error_message() +
              "); the lease will expire and the recipients be retried");
  }
  {
    std::lock_guard lock(shards_[op->shard]->mu);
    --shards_[op->shard]->sending;
  }
  SendWaiting(op->shard);
  Settled(op->shard, static_cast<uint32_t>(op->parts.size()));
}

// Sends the first n waiting acks one request each (after a merged one was refused).
void AckSender::Split(uint32_t shard, size_t n) {
  std::vector<std::shared_ptr<Op>> ops;
  {
    ShardQueue& q = *shards_[shard];
    std::lock_guard lock(q.mu);
    --q.sending;  // the refused request
    for (size_t i = 0; i < n && !q.waiting.empty(); ++i) {
      auto op = std::make_shared<Op>();
      op->parts.push_back(std::move(q.waiting.front()));
      q.waiting.pop_front();
      op->req = std::make_shared<v1::AckRequest>(std::move(op->parts.front()));
      op->shard = shard;
      op->deadline = std::chrono::system_clock::now() + kGiveUpAfter;
      ++q.sending;
      ops.push_back(std::move(op));
    }
  }
  for (auto& op : ops) Try(op);
}

void AckSender::Settled(uint32_t shard, uint32_t n) {
  credits_(shard, n);
  std::lock_guard lock(mu_);
  in_flight_ -= n;
  if (in_flight_ == 0) cv_.notify_all();
}

}  // namespace mx::delivery
