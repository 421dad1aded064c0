// ack_builder.h — one leased message's Ack: each recipient's outcome settled
// against the queue's timeouts (queue_warn, queue_return, NOTIFY), logged
// (the maillog `to=<…>, delay=…, stat=…` line), counted and classified; the
// DSNs the attempt owes (a bounce or double bounce, the postmaster's copy, a
// delay warning, a relay receipt) go into the same Ack, so they exist iff the
// outcomes were recorded; hard bounces collect for the suppression list.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "dsn.h"
#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/qid.h"
#include "smtp_client.h"

namespace mx::delivery {

// A recipient's outcome and where it came from.
struct Outcome {
  RcptOutcome r;
  std::string relay;
  bool dsn_forwarded = false;  // the next hop took over the NOTIFY request
  std::string tls;             // protocol and cipher when the session was encrypted
  bool throttled = false;      // put back by a delivery limit, not by the destination
  int64_t not_before = 0;      // throttled because the site is suspended: not before then
};

// Where and how a domain's recipients were attempted (for the log line and metrics).
struct AttemptInfo {
  std::string domain, mailer;
  std::string site;    // when a shaping rule names it
  std::string source;  // the egress source, when delivery.sources are configured
  int64_t xdelay_us = 0;
  std::chrono::steady_clock::time_point message_start;
};

class AckBuilder {
 public:
  struct Options {
    std::string hostname;   // the DSNs' Reporting-MTA
    std::string worker_id;  // the ack's worker and who added a suppression
    std::chrono::seconds queue_warn{4 * 3600}, queue_return{5 * 86400};
    bool suppress_hard_bounces = false;
    std::string postmaster_copy, double_bounce_address;
    static Options From(const Config& config, std::string worker_id);
  };

  AckBuilder(const Options& options, const Clock& clock, QidGenerator& qids, const v1::LeasedMessage& m);

  void Add(const v1::Recipient& rc, Outcome o, const AttemptInfo& info);
  // The Ack with its DSNs; call once, after every Add.
  v1::AckRequest Finish();
  // Hard bounces for the suppression list (none unless suppress_hard_bounces).
  v1::SuppressRequest TakeSuppressions() { return std::move(suppress_); }

 private:
  void Log(const v1::Recipient& rc, const Outcome& o, const AttemptInfo& info, const std::string& cls) const;
  // Why it was not delivered (throttled put-backs are not the destination's answer); "" when delivered.
  std::string Classify(const v1::Recipient& rc, const Outcome& o);
  void QueueDsn(DsnAction action, std::vector<DsnRecipient> rcpts);
  DsnInput MakeDsn(DsnAction action, std::vector<DsnRecipient> rcpts);
  void Queue(const DsnInput& in, v1::NewMessage msg, const char* what);

  const Options& options_;
  const Clock& clock_;
  QidGenerator& qids_;
  const v1::LeasedMessage& m_;
  const int64_t age_us_, warn_us_, return_us_;
  v1::AckRequest ack_;
  v1::SuppressRequest suppress_;
  std::vector<DsnRecipient> failed_, delayed_, relayed_;
};

}  // namespace mx::delivery
