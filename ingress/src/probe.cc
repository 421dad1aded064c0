// probe.cc — registration of the ingress metrics.
#include "probe.h"

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
  enqueue_batch_ = &prometheus::BuildHistogram()
                        .Name("mx_ingress_enqueue_batch_messages")
                        .Help("Messages per EnqueueBatch call to a queue shard's leader")
                        .Register(reg)
                        .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128});
  commands_ = &prometheus::BuildCounter()
                   .Name("mx_ingress_commands_total")
                   .Help("SMTP commands received, by verb")
                   .Register(reg);
  rejections_ = &prometheus::BuildCounter()
                     .Name("mx_ingress_rejections_total")
                     .Help("SMTP rejections by reason and reply code")
                     .Register(reg);
  discarded_ = &prometheus::BuildCounter()
                    .Name("mx_ingress_messages_discarded_total")
                    .Help("Messages accepted and dropped by a DISCARD verdict (mailstats msgsdis)")
                    .Register(reg)
                    .Add({});
  auth_ = &prometheus::BuildCounter().Name("mx_ingress_auth_total").Help("SMTP AUTH attempts by result").Register(reg);
  tls_ = &prometheus::BuildCounter()
              .Name("mx_ingress_tls_handshakes_total")
              .Help("STARTTLS handshakes by result")
              .Register(reg);
  reloads_ = &prometheus::BuildCounter()
                  .Name("mx_ingress_policy_reloads_total")
                  .Help("Policy reloads by result (a failed reload keeps the old policy)")
                  .Register(reg);
  policy_info_ = &prometheus::BuildGauge()
                      .Name("mx_ingress_policy_info")
                      .Help("The acceptance policy version this process runs (local, or v<N>-<hash> when pushed)")
                      .Register(reg);
  dnsbl_ = &prometheus::BuildCounter()
                .Name("mx_ingress_dnsbl_lookups_total")
                .Help("DNSBL answers at connect by zone and result (tempfail: DNS failed, client passed)")
                .Register(reg);
  dkim_ = &prometheus::BuildCounter()
               .Name("mx_ingress_dkim_signatures_total")
               .Help("DKIM signatures made at ingress by algorithm (error: signing failed, message refused 451)")
               .Register(reg);
  inject_ = &prometheus::BuildCounter()
                 .Name("mx_ingress_inject_requests_total")
                 .Help("Inject API calls by result (ok, invalid, unauthenticated, rejected, unavailable)")
                 .Register(reg);
  // Known label values start at 0, so rate() and alerts see the first event.
  for (const char* r : {"ok", "invalid", "unauthenticated", "rejected", "unavailable"}) inject_->Add({{"result", r}});
  for (const char* a : {"rsa-sha256", "ed25519-sha256", "error"}) dkim_->Add({{"algorithm", a}});
  for (const char* r : {"ok", "failed"}) {
    auth_->Add({{"result", r}});
    tls_->Add({{"result", r}});
  }
  for (const char* r : {"ok", "error"}) reloads_->Add({{"result", r}});
}

void Probe::DnsblAnswer(const std::string& zone, ingress::DnsblAnswer::Kind kind) {
  dnsbl_->Add({{"zone", zone}, {"result", DnsblResultName(kind)}}).Increment();
}

void Probe::OnDkim(std::string_view algorithm, bool ok) {
  dkim_->Add({{"algorithm", ok ? std::string(algorithm) : "error"}}).Increment();
}

void Probe::OnAuth(bool ok) {
  auth_->Add({{"result", ok ? "ok" : "failed"}}).Increment();
}

void Probe::TlsHandshake(bool ok) {
  tls_->Add({{"result", ok ? "ok" : "failed"}}).Increment();
}

void Probe::PolicyVersion(const std::string& version) {
  std::lock_guard lock(policy_mu_);
  if (policy_current_ != nullptr) policy_info_->Remove(policy_current_);
  policy_current_ = &policy_info_->Add({{"version", version}});
  policy_current_->Set(1);
}

void Probe::PolicyReload(bool ok) {
  reloads_->Add({{"result", ok ? "ok" : "error"}}).Increment();
}

void Probe::OnCommand(std::string_view verb) {
  commands_->Add({{"verb", std::string(verb)}}).Increment();
}

void Probe::OnReject(RejectReason reason, int code) {
  rejections_->Add({{"reason", RejectReasonName(reason)}, {"code", std::to_string(code)}}).Increment();
}

}  // namespace mx::ingress
