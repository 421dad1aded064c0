// ack_sender.h — delivery's Acks to the queue: one per delivered message,
// coalesced per shard (at most kInFlightPerShard Ack RPCs outstanding; the
// acks finished meanwhile leave together as one request — one RPC, one Raft
// command — up to kMaxPerRequest acks or kMaxRequestBytes), retried for up
// to 30 s across leader changes (acks are idempotent), and resent one by one
// when the queue refuses a merged request. When a request is settled
// (acked, or given up on: the leases then expire and the recipients are
// retried) the credits callback gets its deliveries back. Thread-safe.
#pragma once

#include <grpcpp/alarm.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "queue_link.h"

namespace mx::delivery {

class AckSender {
 public:
  static constexpr int kInFlightPerShard = 2;
  static constexpr size_t kMaxPerRequest = 256;
  static constexpr size_t kMaxRequestBytes = 8u << 20;
  static constexpr std::chrono::seconds kGiveUpAfter{30};
  static constexpr uint32_t kMaxShards = 256;  // shard ids are 0..255

  // credits(shard, n): n deliveries from shard are settled. Runs on a gRPC
  // thread or the caller's; must not call back into the sender.
  using Credits = std::function<void(uint32_t shard, uint32_t n)>;
  AckSender(QueueLink& link, std::string worker_id, Credits credits);
  ~AckSender();

  // One delivered message's ack (results, hosts, DSNs) for shard.
  void Send(uint32_t shard, v1::AckRequest ack);
  // No more retries: acks in flight settle with their current attempt.
  void Stop();
  // Every ack settled; false when some are still outstanding after max.
  bool WaitIdle(std::chrono::milliseconds max);

 private:
  struct Op;
  struct ShardQueue {
    std::mutex mu;
    std::deque<v1::AckRequest> waiting;  // one per delivered message, oldest first
    int sending = 0;                     // Ack RPCs outstanding
  };

  void SendWaiting(uint32_t shard);
  void Try(const std::shared_ptr<Op>& op);
  void Done(const std::shared_ptr<Op>& op, const grpc::Status& s, bool new_leader);
  void Split(uint32_t shard, size_t n);
  void Settled(uint32_t shard, uint32_t n);

  QueueLink& link_;
  const std::string worker_id_;
  Credits credits_;
  std::vector<std::unique_ptr<ShardQueue>> shards_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t in_flight_ = 0;  // deliveries not yet settled
};

}  // namespace mx::delivery
