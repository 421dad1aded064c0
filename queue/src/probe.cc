// probe.cc — registration of the queue's metrics.
#include "probe.h"

#include <prometheus/registry.h>

#include "mx/common/metrics.h"
#include "state_machine.h"

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
  moved_ = &prometheus::BuildCounter()
                .Name("mx_queue_moved_messages_total")
                .Help("Messages moved off a draining shard to the active shards (drain-shard --move)")
                .Register(reg)
                .Add({});
  enqueue_latency_ = &prometheus::BuildHistogram()
                          .Name("mx_queue_enqueue_latency_seconds")
                          .Help("Time from Enqueue request to commit, server side")
                          .Register(reg)
                          .Add({}, metrics::LatencyBuckets());
  commit_batch_ = &prometheus::BuildHistogram()
                       .Name("mx_queue_commit_batch_commands")
                       .Help("Commands per group-committed log entry")
                       .Register(reg)
                       .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512});
  commit_latency_ = &prometheus::BuildHistogram()
                         .Name("mx_queue_commit_latency_seconds")
                         .Help("Time from proposing a log entry to its commit on a quorum and local apply")
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
  depth_ = &prometheus::BuildGauge()
                .Name("mx_queue_depth_recipients")
                .Help("Recipients in the queue by state (this replica's view)")
                .Register(reg);
  messages_ = &prometheus::BuildGauge().Name("mx_queue_messages").Help("Messages in the queue").Register(reg);
  oldest_age_ = &prometheus::BuildGauge()
                     .Name("mx_queue_oldest_message_age_seconds")
                     .Help("Age of the oldest queued message")
                     .Register(reg);
  leader_changes_ = &prometheus::BuildCounter()
                         .Name("mx_queue_raft_leader_changes_total")
                         .Help("Times this replica gained or lost leadership of its shard")
                         .Register(reg);
  stale_appends_ = &prometheus::BuildCounter()
                        .Name("mx_queue_raft_stale_appends_dropped_total")
                        .Help(
                            "AppendEntries from index 1 dropped because this replica's log starts after it (a stale "
                            "resend)")
                        .Register(reg);
  is_leader_ =
      &prometheus::BuildGauge().Name("mx_queue_raft_is_leader").Help("1 if this replica leads its shard").Register(reg);
  term_ = &prometheus::BuildGauge().Name("mx_queue_raft_term").Help("Current Raft term").Register(reg);
  commit_index_ =
      &prometheus::BuildGauge().Name("mx_queue_raft_commit_index").Help("Highest committed log index").Register(reg);
  applied_index_ = &prometheus::BuildGauge()
                        .Name("mx_queue_raft_applied_index")
                        .Help("Highest log index applied to the state machine")
                        .Register(reg);
  permits_ = &prometheus::BuildCounter()
                  .Name("mx_queue_permits_total")
                  .Help("Delivery limit requests answered by this leader: connection slots (acquire) and message rates")
                  .Register(reg);
  for (const char* op : {"acquire", "rate"}) {
    for (const char* result : {"granted", "refused"}) permits_->Add({{"op", op}, {"result", result}});
  }
}

void Probe::LeaderChanged(uint32_t shard) {
  leader_changes_->Add({{"shard", std::to_string(shard)}}).Increment();
}

void Probe::StaleAppendDropped(uint32_t shard) {
  stale_appends_->Add({{"shard", std::to_string(shard)}}).Increment();
}

void Probe::SetRaft(uint32_t shard, bool leader, uint64_t term, uint64_t commit_index, uint64_t applied_index) {
  const std::map<std::string, std::string> l{{"shard", std::to_string(shard)}};
  is_leader_->Add(l).Set(leader ? 1 : 0);
  term_->Add(l).Set(static_cast<double>(term));
  commit_index_->Add(l).Set(static_cast<double>(commit_index));
  applied_index_->Add(l).Set(static_cast<double>(applied_index));
  stale_appends_->Add(l);  // exported at 0 from the start
}

void Probe::SetCounts(uint32_t shard, const QueueCounts& counts, int64_t oldest_age_seconds) {
  const std::string sh = std::to_string(shard);
  static constexpr std::pair<int, const char*> kStates[] = {
      {v1::RCPT_READY, "ready"}, {v1::RCPT_LEASED, "leased"}, {v1::RCPT_DEFERRED, "deferred"}, {v1::RCPT_HELD, "held"}};
  for (auto [s, name] : kStates) {
    depth_->Add({{"state", name}, {"shard", sh}}).Set(static_cast<double>(counts.by_status[s]));
  }
  messages_->Add({{"shard", sh}}).Set(static_cast<double>(counts.messages));
  oldest_age_->Add({{"shard", sh}}).Set(static_cast<double>(oldest_age_seconds));
}

}  // namespace mx::queue
