// probe.h — every metric the queue exports, in one place.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <cstdint>
#include <string>

namespace mx::queue {

struct QueueCounts;

class Probe {
 public:
  static Probe& Get();

  void Enqueued(double seconds) {
    enqueue_latency_->Observe(seconds);
    enqueued_->Increment();
  }
  void EnqueueRejected() { enqueue_rejected_->Increment(); }
  // Messages moved off a draining shard (deleted there after their copy committed).
  void MessagesMoved(size_t n) { moved_->Increment(static_cast<double>(n)); }
  // One log entry proposed with `commands` group-committed commands.
  void Batched(size_t commands) { commit_batch_->Observe(static_cast<double>(commands)); }
  // Time from proposing an entry to its commit and local apply.
  void EntryCommitted(double seconds) { commit_latency_->Observe(seconds); }
  void LeaderChanged(uint32_t shard);
  // A stale AppendEntries from index 1 dropped by a replica whose log starts
  // later (raft_log.cc, OnReceive).
  void StaleAppendDropped(uint32_t shard);
  void SetRaft(uint32_t shard, bool leader, uint64_t term, uint64_t commit_index, uint64_t applied_index);
  void Leased(size_t recipients) { leased_->Increment(static_cast<double>(recipients)); }
  void Acked(int outcome) {
    if (outcome >= 1 && outcome <= 3) acked_[outcome]->Increment();
  }
  void SetCounts(uint32_t shard, const QueueCounts& counts, int64_t oldest_age_seconds);
  // Delivery limits: op "acquire" (connection slots) or "rate"; granted or refused.
  void Permit(const char* op, bool granted) {
    permits_->Add({{"op", op}, {"result", granted ? "granted" : "refused"}}).Increment();
  }

 private:
  Probe();
  prometheus::Counter* enqueued_;
  prometheus::Counter* enqueue_rejected_;
  prometheus::Counter* moved_;
  prometheus::Histogram* enqueue_latency_;
  prometheus::Histogram* commit_batch_;
  prometheus::Histogram* commit_latency_;
  prometheus::Counter* leased_;
  prometheus::Counter* acked_[4] = {};
  prometheus::Family<prometheus::Gauge>* depth_;
  prometheus::Family<prometheus::Gauge>* messages_;
  prometheus::Family<prometheus::Gauge>* oldest_age_;
  prometheus::Family<prometheus::Counter>* leader_changes_;
  prometheus::Family<prometheus::Counter>* stale_appends_;
  prometheus::Family<prometheus::Gauge>* is_leader_;
  prometheus::Family<prometheus::Gauge>* term_;
  prometheus::Family<prometheus::Gauge>* commit_index_;
  prometheus::Family<prometheus::Gauge>* applied_index_;
  prometheus::Family<prometheus::Counter>* permits_;
};

}  // namespace mx::queue
