// probe.cc — registration of the queue's metrics.
#include "mx/queue/probe.h"

#include <prometheus/registry.h>

#include "mx/common/metrics.h"
#include "mx/queue/state_machine.h"

namespace mx::queue {

Probe& Probe::Get() {
  static Probe probe;
  return probe;
}

Probe::Probe() {
  auto& reg = metrics::Registry();
  enqueued_ = &prometheus::BuildCounter()
                   .Name("mx_queue_enqueued_total")
                   .Help("Messages committed to the queue by Enqueue")
                   .Register(reg)
                   .Add({});
  enqueue_rejected_ = &prometheus::BuildCounter()
                           .Name("mx_queue_enqueue_errors_total")
                           .Help("Enqueue requests answered with an error")
                           .Register(reg)
                           .Add({});
  enqueue_latency_ = &prometheus::BuildHistogram()
                          .Name("mx_queue_enqueue_latency_seconds")
                          .Help("Time from Enqueue request to commit, server side")
                          .Register(reg)
                          .Add({}, metrics::LatencyBuckets());
  commit_batch_ = &prometheus::BuildHistogram()
                       .Name("mx_queue_commit_batch_commands")
                       .Help("Commands per group-committed write")
                       .Register(reg)
                       .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512});
  commit_latency_ = &prometheus::BuildHistogram()
                         .Name("mx_queue_commit_latency_seconds")
                         .Help("Duration of one durable apply of a command batch")
                         .Register(reg)
                         .Add({}, metrics::LatencyBuckets());
  leased_ = &prometheus::BuildCounter()
                 .Name("mx_queue_leased_recipients_total")
                 .Help("Recipients handed to delivery workers")
                 .Register(reg)
                 .Add({});
  auto& acked = prometheus::BuildCounter()
                    .Name("mx_queue_acked_recipients_total")
                    .Help("Recipient outcomes reported by delivery workers")
                    .Register(reg);
  acked_[1] = &acked.Add({{"outcome", "delivered"}});
  acked_[2] = &acked.Add({{"outcome", "deferred"}});
  acked_[3] = &acked.Add({{"outcome", "bounced"}});
  auto& depth =
      prometheus::BuildGauge().Name("mx_queue_depth_recipients").Help("Recipients in the queue by state").Register(reg);
  depth_[v1::RCPT_READY] = &depth.Add({{"state", "ready"}});
  depth_[v1::RCPT_LEASED] = &depth.Add({{"state", "leased"}});
  depth_[v1::RCPT_DEFERRED] = &depth.Add({{"state", "deferred"}});
  messages_ = &prometheus::BuildGauge().Name("mx_queue_messages").Help("Messages in the queue").Register(reg).Add({});
  oldest_age_ = &prometheus::BuildGauge()
                     .Name("mx_queue_oldest_message_age_seconds")
                     .Help("Age of the oldest queued message")
                     .Register(reg)
                     .Add({});
}

void Probe::SetCounts(const QueueCounts& counts, int64_t oldest_age_seconds) {
  for (int s : {v1::RCPT_READY, v1::RCPT_LEASED, v1::RCPT_DEFERRED}) {
    depth_[s]->Set(static_cast<double>(counts.by_status[s]));
  }
  messages_->Set(static_cast<double>(counts.messages));
  oldest_age_->Set(static_cast<double>(oldest_age_seconds));
}

}  // namespace mx::queue
