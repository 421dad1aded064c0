// probe.h — every metric the delivery role exports, in one place.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include <string>

namespace mx::delivery {

class Probe {
 public:
  static Probe& Get();

  // result: delivered | deferred | bounced
  void Delivery(const std::string& result, const std::string& mailer, double seconds);
  void DnsQuery(const std::string& type, const std::string& result);
  void DnsLatency(double seconds) { dns_latency_->Observe(seconds); }
  void DsnSent() { dsn_->Increment(); }
  void HostSkipped() { host_skips_->Increment(); }
  void HostsKnown(size_t n) { hosts_known_->Set(static_cast<double>(n)); }
  void InFlight(int delta) { in_flight_->Increment(delta); }
  void AckFailed() { ack_failed_->Increment(); }
  // A transaction's connection: "new" (opened for it) or "cached" (reused).
  void Connection(bool cached) { (cached ? conn_cached_ : conn_new_)->Increment(); }
  void CachedConnections(int delta) { cache_size_->Increment(delta); }
  // A destination whose recipients were put back by a limit: "connections" or "rate".
  void Throttled(const std::string& limit) { throttled_->Add({{"limit", limit}}).Increment(); }
  void AaaaWorkaround() { aaaa_workaround_->Increment(); }
  // Sites suspended or slowed as this worker knows them (shard 0's list and
  // its own triggers).
  void SitesHeld(size_t suspended, size_t slowed) {
    sites_->Add({{"state", "suspended"}}).Set(static_cast<double>(suspended));
    sites_->Add({{"state", "slowed"}}).Set(static_cast<double>(slowed));
  }
  // A reply rule fired: site is the rule's site name ("other" for a site no
  // rule names, to keep the label set bounded); action suspend | slow.
  void ReplyRuleFired(const std::string& site, const std::string& action) {
    reply_rules_->Add({{"site", site}, {"action", action}}).Increment();
  }
  // A recipient not delivered, by class (bounce_class.h) and result
  // (deferred | bounced).
  void ReplyClass(const std::string& cls, const std::string& result) {
    reply_classes_->Add({{"class", cls}, {"result", result}}).Increment();
  }
  // Recipients put back because their site is suspended.
  void SuspendedPutBack(size_t n) { suspended_put_back_->Increment(static_cast<double>(n)); }
  // A destination's MTA-STS policy mode at a delivery attempt (none | testing | enforce).
  void MtaSts(const std::string& mode) { mta_sts_->Add({{"mode", mode}}).Increment(); }
  // A DANE check of an MX host (delivery.dane): secure (TLSA to match),
  // unusable (TLS without checks), insecure (no DNSSEC: as before), lookup_failed.
  void Dane(const std::string& result) { dane_->Add({{"result", result}}).Increment(); }
  // An address where opportunistic STARTTLS failed lately got plaintext at once.
  void TlsFailureRemembered() { tls_remembered_->Increment(); }
  // Addresses a hard bounce put on the suppression list.
  void Suppressed(uint32_t n) { suppressed_->Increment(n); }
  // A recipient attempted again after a deferral (not a throttled put-back).
  void Retry() { retries_->Increment(); }
  // A recipient's final outcome (delivered | bounced) and its time in the
  // queue since arrival: the log's delay=.
  void Settled(const std::string& result, double seconds);

 private:
  Probe();
  prometheus::Family<prometheus::Counter>* deliveries_;
  prometheus::Family<prometheus::Counter>* dns_queries_;
  prometheus::Histogram* latency_;
  prometheus::Histogram* dns_latency_;
  prometheus::Counter* dsn_;
  prometheus::Counter* host_skips_;
  prometheus::Gauge* hosts_known_;
  prometheus::Counter* ack_failed_;
  prometheus::Gauge* in_flight_;
  prometheus::Counter* conn_new_;
  prometheus::Counter* conn_cached_;
  prometheus::Gauge* cache_size_;
  prometheus::Family<prometheus::Counter>* throttled_;
  prometheus::Counter* aaaa_workaround_;
  prometheus::Counter* retries_;
  prometheus::Family<prometheus::Gauge>* sites_;
  prometheus::Family<prometheus::Counter>* reply_rules_;
  prometheus::Counter* suspended_put_back_;
  prometheus::Family<prometheus::Counter>* reply_classes_;
  prometheus::Family<prometheus::Counter>* mta_sts_;
  prometheus::Counter* tls_remembered_;
  prometheus::Counter* suppressed_;
  prometheus::Family<prometheus::Counter>* dane_;
  prometheus::Histogram* delay_delivered_;
  prometheus::Histogram* delay_bounced_;
};

}  // namespace mx::delivery
