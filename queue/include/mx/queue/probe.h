// probe.h — every metric the queue exports, in one place.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

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
  void Committed(size_t commands, double seconds) {
    commit_batch_->Observe(static_cast<double>(commands));
    commit_latency_->Observe(seconds);
  }
  void Leased(size_t recipients) { leased_->Increment(static_cast<double>(recipients)); }
  void Acked(int outcome) {
    if (outcome >= 1 && outcome <= 3) acked_[outcome]->Increment();
  }
  void SetCounts(const QueueCounts& counts, int64_t oldest_age_seconds);

 private:
  Probe();
  prometheus::Counter* enqueued_;
  prometheus::Counter* enqueue_rejected_;
  prometheus::Histogram* enqueue_latency_;
  prometheus::Histogram* commit_batch_;
  prometheus::Histogram* commit_latency_;
  prometheus::Counter* leased_;
  prometheus::Counter* acked_[4] = {};
  prometheus::Gauge* depth_[6] = {};
  prometheus::Gauge* messages_;
  prometheus::Gauge* oldest_age_;
};

}  // namespace mx::queue
