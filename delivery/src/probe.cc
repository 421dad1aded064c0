// probe.cc — registration of the delivery metrics.
#include "probe.h"

#include <prometheus/registry.h>

#include "mx/common/metrics.h"

namespace mx::delivery {

Probe& Probe::Get() {
  static Probe probe;
  return probe;
}

Probe::Probe() {
  auto& reg = metrics::Registry();
  deliveries_ = &prometheus::BuildCounter()
                     .Name("mx_delivery_recipients_total")
                     .Help("Recipient delivery attempts by result and mailer")
                     .Register(reg);
  dns_queries_ = &prometheus::BuildCounter()
                      .Name("mx_delivery_dns_queries_total")
                      .Help("DNS queries by record type and result")
                      .Register(reg);
  latency_ = &prometheus::BuildHistogram()
                  .Name("mx_delivery_attempt_seconds")
                  .Help("Duration of one delivery attempt (resolve, connect, transaction)")
                  .Register(reg)
                  .Add({}, metrics::LatencyBuckets());
  dns_latency_ = &prometheus::BuildHistogram()
                      .Name("mx_delivery_dns_latency_seconds")
                      .Help("Time to resolve a destination's MX hosts and addresses")
                      .Register(reg)
                      .Add({}, metrics::LatencyBuckets());
  dsn_ = &prometheus::BuildCounter()
              .Name("mx_delivery_dsn_sent_total")
              .Help("Delivery status notifications queued to senders")
              .Register(reg)
              .Add({});
  host_skips_ = &prometheus::BuildCounter()
                     .Name("mx_delivery_host_status_skips_total")
                     .Help("MX hosts skipped without connecting: they failed within host_status_timeout")
                     .Register(reg)
                     .Add({});
  hosts_known_ = &prometheus::BuildGauge()
                      .Name("mx_delivery_host_status_hosts")
                      .Help("MX hosts in this worker's view of the cluster's host status (last refresh)")
                      .Register(reg)
                      .Add({});
  ack_failed_ = &prometheus::BuildCounter()
                     .Name("mx_delivery_ack_errors_total")
                     .Help("Ack RPCs that failed (the lease expires and the recipients are retried)")
                     .Register(reg)
                     .Add({});
  in_flight_ = &prometheus::BuildGauge()
                    .Name("mx_delivery_messages_in_flight")
                    .Help("Leased messages being delivered")
                    .Register(reg)
                    .Add({});
  auto& conns = prometheus::BuildCounter()
                    .Name("mx_delivery_connections_total")
                    .Help("SMTP/LMTP transactions by connection: new (opened for it) or cached (ConnectionCache reuse)")
                    .Register(reg);
  conn_new_ = &conns.Add({{"connection", "new"}});
  conn_cached_ = &conns.Add({{"connection", "cached"}});
  cache_size_ = &prometheus::BuildGauge()
                     .Name("mx_delivery_cached_connections")
                     .Help("Idle connections in this worker's connection cache")
                     .Register(reg)
                     .Add({});
  throttled_ =
      &prometheus::BuildCounter()
           .Name("mx_delivery_throttled_total")
           .Help("Deliveries put back for a later run by a delivery limit (connections, rate, connection_rate)")
           .Register(reg);
  aaaa_workaround_ =
      &prometheus::BuildCounter()
           .Name("mx_delivery_aaaa_workaround_total")
           .Help("AAAA lookups that failed temporarily and counted as no IPv6 address (WorkAroundBrokenAAAA)")
           .Register(reg)
           .Add({});
  for (const char* limit : {"connections", "rate", "connection_rate", "source_rate"})
    throttled_->Add({{"limit", limit}});
  sites_ = &prometheus::BuildGauge()
                .Name("mx_delivery_sites")
                .Help("Sites suspended or slowed (reputation backoff, mxctl suspend), as this worker knows them")
                .Register(reg);
  SitesHeld(0, 0);
  reply_rules_ = &prometheus::BuildCounter()
                      .Name("mx_delivery_reply_rules_fired_total")
                      .Help("Shaping reply rules that suspended or slowed a site, by site and action")
                      .Register(reg);
  for (const char* action : {"suspend", "slow"}) reply_rules_->Add({{"site", "other"}, {"action", action}});
  reply_classes_ = &prometheus::BuildCounter()
                        .Name("mx_delivery_reply_classes_total")
                        .Help("Recipients not delivered, by class of the reply (bounce classification) and result")
                        .Register(reg);
  for (const char* result : {"deferred", "bounced"}) reply_classes_->Add({{"class", "other"}, {"result", result}});
  mta_sts_ = &prometheus::BuildCounter()
                  .Name("mx_delivery_mta_sts_total")
                  .Help("Deliveries to a destination by its MTA-STS policy mode (delivery.mta_sts on)")
                  .Register(reg);
  for (const char* mode : {"none", "testing", "enforce"}) mta_sts_->Add({{"mode", mode}});
  dane_ = &prometheus::BuildCounter()
               .Name("mx_delivery_dane_total")
               .Help("DANE checks of MX hosts by result (secure, unusable, insecure, lookup_failed)")
               .Register(reg);
  for (const char* r : {"secure", "unusable", "insecure", "lookup_failed"}) dane_->Add({{"result", r}});
  suppressed_ = &prometheus::BuildCounter()
                     .Name("mx_delivery_suppressed_total")
                     .Help("Addresses put on the suppression list after a hard bounce (delivery.suppress_hard_bounces)")
                     .Register(reg)
                     .Add({});
  tls_remembered_ = &prometheus::BuildCounter()
                         .Name("mx_delivery_tls_failure_remembered_total")
                         .Help("Connections sent in the clear at once: STARTTLS failed at that address lately")
                         .Register(reg)
                         .Add({});
  suspended_put_back_ = &prometheus::BuildCounter()
                             .Name("mx_delivery_suspended_put_back_total")
                             .Help("Recipients put back for later because their site is suspended")
                             .Register(reg)
                             .Add({});
  retries_ = &prometheus::BuildCounter()
                  .Name("mx_delivery_retries_total")
                  .Help("Recipient attempts after an earlier deferral (the queue retried them)")
                  .Register(reg)
                  .Add({});
  // Seconds from arrival to the final outcome: 1 s to 5 days (queue_return).
  const prometheus::Histogram::BucketBoundaries delay_buckets{1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 432000};
  auto& delay =
      prometheus::BuildHistogram()
          .Name("mx_delivery_delay_seconds")
          .Help("Time from arrival to a recipient's final outcome (delivered or bounced), as delay= in the log")
          .Register(reg);
  delay_delivered_ = &delay.Add({{"result", "delivered"}}, delay_buckets);
  delay_bounced_ = &delay.Add({{"result", "bounced"}}, delay_buckets);
}

void Probe::Delivery(const std::string& result, const std::string& mailer, double seconds) {
  deliveries_->Add({{"result", result}, {"mailer", mailer}}).Increment();
  latency_->Observe(seconds);
}

void Probe::DnsQuery(const std::string& type, const std::string& result) {
  dns_queries_->Add({{"type", type}, {"result", result}}).Increment();
}

void Probe::Settled(const std::string& result, double seconds) {
  (result == "delivered" ? delay_delivered_ : delay_bounced_)->Observe(seconds);
}

}  // namespace mx::delivery
