// probe.cc — registration of the ingress metrics.
#include "mx/ingress/probe.h"

#include <prometheus/registry.h>

#include <string>

#include "mx/common/metrics.h"

namespace mx::ingress {

Probe& Probe::Get() {
  static Probe probe;
  return probe;
}

Probe::Probe() {
  auto& reg = metrics::Registry();
  sessions_ = &prometheus::BuildCounter()
                   .Name("mx_ingress_sessions_total")
                   .Help("SMTP sessions accepted")
                   .Register(reg)
                   .Add({});
  active_ = &prometheus::BuildGauge()
                 .Name("mx_ingress_sessions_active")
                 .Help("SMTP sessions currently open")
                 .Register(reg)
                 .Add({});
  accepted_ = &prometheus::BuildCounter()
                   .Name("mx_ingress_messages_accepted_total")
                   .Help("Messages answered 250 after a committed Enqueue")
                   .Register(reg)
                   .Add({});
  bytes_ = &prometheus::BuildCounter()
                .Name("mx_ingress_accepted_bytes_total")
                .Help("Bytes of accepted messages, trace headers included")
                .Register(reg)
                .Add({});
  enqueue_latency_ = &prometheus::BuildHistogram()
                          .Name("mx_ingress_enqueue_latency_seconds")
                          .Help("Time from end of DATA to the queue's commit")
                          .Register(reg)
                          .Add({}, metrics::LatencyBuckets());
  commands_ = &prometheus::BuildCounter()
                   .Name("mx_ingress_commands_total")
                   .Help("SMTP commands received, by verb")
                   .Register(reg);
  rejections_ = &prometheus::BuildCounter()
                     .Name("mx_ingress_rejections_total")
                     .Help("SMTP rejections by reason and reply code")
                     .Register(reg);
}

void Probe::OnCommand(std::string_view verb) {
  commands_->Add({{"verb", std::string(verb)}}).Increment();
}

void Probe::OnReject(RejectReason reason, int code) {
  rejections_->Add({{"reason", RejectReasonName(reason)}, {"code", std::to_string(code)}}).Increment();
}

}  // namespace mx::ingress
