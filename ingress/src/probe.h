// probe.h — every metric the ingress exports, in one place.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <mutex>
#include <string>
#include <string_view>

#include "session.h"

namespace mx::ingress {

class Probe final : public SessionObserver {
 public:
  static Probe& Get();

  void SessionOpened() {
    sessions_->Increment();
    active_->Increment();
  }
  void SessionClosed() { active_->Decrement(); }
  void Accepted(uint64_t bytes, double enqueue_seconds) {
    accepted_->Increment();
    bytes_->Increment(static_cast<double>(bytes));
    enqueue_latency_->Observe(enqueue_seconds);
  }
  // One EnqueueBatch call to a shard's leader, carrying n messages.
  void EnqueueBatch(size_t n) { enqueue_batch_->Observe(static_cast<double>(n)); }
  void OnCommand(std::string_view verb) override;
  void OnReject(RejectReason reason, int code) override;
  void OnAuth(bool ok) override;
  void OnDiscard() override { discarded_->Increment(); }
  void OnDkim(std::string_view algorithm, bool ok) override;
  // An Inject call: ok | invalid | unauthenticated | rejected | unavailable.
  void InjectRequest(const std::string& result) { inject_->Add({{"result", result}}).Increment(); }
  void TlsHandshake(bool ok);
  // One DNSBL answer at connect (zone: a configured zone, so the label is bounded).
  void DnsblAnswer(const std::string& zone, ingress::DnsblAnswer::Kind kind);
  // result: "ok" or "error"; a failed reload keeps the previous policy.
  void PolicyReload(bool ok);
  // The policy this process runs: mx_ingress_policy_info{version} is 1 for
  // it (one series; the previous version's is removed).
  void PolicyVersion(const std::string& version);

 private:
  Probe();
  prometheus::Counter* sessions_;
  prometheus::Gauge* active_;
  prometheus::Counter* accepted_;
  prometheus::Counter* bytes_;
  prometheus::Histogram* enqueue_latency_;
  prometheus::Histogram* enqueue_batch_;
  prometheus::Family<prometheus::Counter>* commands_;
  prometheus::Family<prometheus::Counter>* rejections_;
  prometheus::Counter* discarded_;
  prometheus::Family<prometheus::Counter>* auth_;
  prometheus::Family<prometheus::Counter>* tls_;
  prometheus::Family<prometheus::Counter>* reloads_;
  prometheus::Family<prometheus::Counter>* dnsbl_;
  prometheus::Family<prometheus::Counter>* dkim_;
  prometheus::Family<prometheus::Counter>* inject_;
  prometheus::Family<prometheus::Gauge>* policy_info_;
  std::mutex policy_mu_;
  prometheus::Gauge* policy_current_ = nullptr;  // guarded by policy_mu_
};

}  // namespace mx::ingress
