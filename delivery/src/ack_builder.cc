// ack_builder.cc — settling, logging and classifying outcomes; the DSNs owed.
#include "ack_builder.h"

#include "bounce_class.h"
#include "cluster_view.h"  // PrintableCut
#include "mx/common/log.h"
#include "probe.h"

namespace mx::delivery {
namespace {

int64_t Micros(std::chrono::seconds s) {
  return std::chrono::duration_cast<std::chrono::microseconds>(s).count();
}

const char* ResultName(v1::Outcome o) {
  return o == v1::OUTCOME_DELIVERED ? "delivered" : o == v1::OUTCOME_DEFERRED ? "deferred" : "bounced";
}

}  // namespace

AckBuilder::Options AckBuilder::Options::From(const Config& config, std::string worker_id) {
  Options o;
  o.hostname = config.hostname;
  o.worker_id = std::move(worker_id);
  o.queue_warn = config.delivery.queue_warn;
  o.queue_return = config.delivery.queue_return;
  o.suppress_hard_bounces = config.delivery.suppress_hard_bounces;
  o.postmaster_copy = config.delivery.postmaster_copy;
  o.double_bounce_address = config.delivery.double_bounce_address;
  return o;
}

AckBuilder::AckBuilder(const Options& options, const Clock& clock, QidGenerator& qids, const v1::LeasedMessage& m)
    : options_(options),
      clock_(clock),
      qids_(qids),
      m_(m),
      age_us_(clock.NowUnixMicros() - m.envelope().arrival_unix_us()),
      warn_us_(Micros(options.queue_warn)),
      return_us_(Micros(options.queue_return)) {
  ack_.set_worker(options.worker_id);
}

void AckBuilder::Add(const v1::Recipient& rc, Outcome o, const AttemptInfo& info) {
  const auto& env = m_.envelope();
  const DsnOwed owed =
      SettleOutcome(env, rc, o.dsn_forwarded, age_us_, warn_us_, return_us_, &o.r.outcome, &o.r.reply, &o.r.dsn_status);
  auto* res = ack_.add_results();
  res->set_qid(env.qid());
  res->set_index(rc.index());
  res->set_outcome(o.r.outcome);
  res->set_reply(o.r.reply);
  res->set_dsn_status(o.r.dsn_status);
  res->set_relay(o.relay);
  res->set_mailer(info.mailer);
  res->set_throttled(o.throttled);
  if (o.not_before > 0) res->set_not_before_unix_us(o.not_before);
  if (o.r.outcome == v1::OUTCOME_DELIVERED) res->set_bytes(env.size());
  const std::string cls = Classify(rc, o);
  Log(rc, o, info, cls);
  const std::string result = ResultName(o.r.outcome);
  Probe::Get().Delivery(result, info.mailer,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - info.message_start).count());
  if (rc.attempts() > 0 && !o.throttled) Probe::Get().Retry();
  if (o.r.outcome != v1::OUTCOME_DEFERRED) {
    Probe::Get().Settled(result, static_cast<double>(clock_.NowUnixMicros() - env.arrival_unix_us()) / 1e6);
  }
  DsnRecipient d{rc.address(), rc.orcpt(), o.r.dsn_status, o.relay, o.r.reply};
  switch (owed) {
    case DsnOwed::kFailed: failed_.push_back(std::move(d)); break;
    case DsnOwed::kDelayed:
      res->set_delay_warned(true);  // Timeout.queuewarn: once per recipient
      delayed_.push_back(std::move(d));
      break;
    case DsnOwed::kRelayed:
      d.status = "2.0.0";
      relayed_.push_back(std::move(d));
      break;
    case DsnOwed::kNone: break;
  }
}

std::string AckBuilder::Classify(const v1::Recipient& rc, const Outcome& o) {
  if (o.r.outcome == v1::OUTCOME_DELIVERED || o.throttled) return "";
  std::string cls(BounceClassName(ClassifyReply(o.r.reply, o.r.dsn_status)));
  Probe::Get().ReplyClass(cls, o.r.outcome == v1::OUTCOME_BOUNCED ? "bounced" : "deferred");
  // A hard bounce for a mailbox that does not exist, answered by the
  // destination itself: onto the suppression list.
  if (options_.suppress_hard_bounces && o.r.outcome == v1::OUTCOME_BOUNCED && !o.relay.empty() &&
      cls == "invalid_recipient" && !o.r.reply.empty() && o.r.reply[0] == '5') {
    v1::Suppression* sup = suppress_.add_add();
    sup->set_address(rc.address());
    sup->set_reason(PrintableCut(o.r.reply, 300));
    sup->set_bounce_class(cls);
    sup->set_by(options_.worker_id + " (" + m_.envelope().qid() + ")");
  }
  return cls;
}

void AckBuilder::Log(const v1::Recipient& rc, const Outcome& o, const AttemptInfo& info, const std::string& cls) const {
  const auto& env = m_.envelope();
  const char* stat = o.r.outcome == v1::OUTCOME_DELIVERED  ? "Sent"
                     : o.r.outcome == v1::OUTCOME_DEFERRED ? "Deferred"
                                                           : "User unknown";
  const std::string stat_text =
      o.r.outcome == v1::OUTCOME_BOUNCED && o.r.dsn_status.rfind("5.1.1", 0) != 0 ? "Service unavailable" : stat;
  log::Mail(env.qid(),
            "to=<" + rc.address() + ">, delay=" + log::FormatDelay(clock_.NowUnixMicros() - env.arrival_unix_us()) +
                ", xdelay=" + log::FormatDelay(info.xdelay_us) + ", mailer=" + info.mailer +
                ", pri=" + std::to_string(env.priority()) + ", relay=" + (o.relay.empty() ? info.domain : o.relay) +
                (o.tls.empty() ? "" : ", tls=" + o.tls) + (info.site.empty() ? "" : ", site=" + info.site) +
                (info.source.empty() ? "" : ", source=" + info.source) + ", dsn=" + o.r.dsn_status +
                (cls.empty() ? "" : ", class=" + cls) +
                ", stat=" + (o.r.outcome == v1::OUTCOME_BOUNCED ? stat_text : stat) + " (" + o.r.reply + ")");
}

v1::AckRequest AckBuilder::Finish() {
  QueueDsn(DsnAction::kFailed, std::move(failed_));
  QueueDsn(DsnAction::kDelayed, std::move(delayed_));
  QueueDsn(DsnAction::kRelayed, std::move(relayed_));
  return std::move(ack_);
}

DsnInput AckBuilder::MakeDsn(DsnAction action, std::vector<DsnRecipient> rcpts) {
  const auto& env = m_.envelope();
  DsnInput in;
  in.action = action;
  in.original = env;
  in.original_body = m_.body();
  in.rcpts = std::move(rcpts);
  in.reporting_mta = options_.hostname;
  in.dsn_qid = qids_.Next();
  in.now_unix_us = clock_.NowUnixMicros();
  in.queue_warn_us = in.now_unix_us - env.arrival_unix_us();
  in.retry_until_us = env.arrival_unix_us() + return_us_;
  return in;
}

void AckBuilder::Queue(const DsnInput& in, v1::NewMessage msg, const char* what) {
  log::Mail(m_.envelope().qid(),
            in.dsn_qid + ": " + what + " to <" + msg.recipients(0).address() + ">: " + in.rcpts.front().diagnostic);
  *ack_.add_dsns() = std::move(msg);
  Probe::Get().DsnSent();
}

// A bounce goes to the sender (with the postmaster's copy of its headers),
// or, for a bounce that bounced, a double bounce to the postmaster.
void AckBuilder::QueueDsn(DsnAction action, std::vector<DsnRecipient> rcpts) {
  if (rcpts.empty()) return;
  DsnInput in = MakeDsn(action, std::move(rcpts));
  v1::NewMessage msg;
  if (action == DsnAction::kDelayed) {
    if (BuildDsn(in, &msg)) Queue(in, std::move(msg), "delay DSN");
  } else if (action == DsnAction::kRelayed) {
    if (BuildDsn(in, &msg)) Queue(in, std::move(msg), "relay DSN");
  } else if (!m_.envelope().is_dsn()) {
    if (BuildDsn(in, &msg)) Queue(in, std::move(msg), "DSN");
    if (!options_.postmaster_copy.empty()) {
      DsnInput copy = in;
      copy.dsn_qid = qids_.Next();
      copy.to = options_.postmaster_copy;
      copy.headers_only = true;
      if (BuildDsn(copy, &msg)) Queue(copy, std::move(msg), "postmaster copy");
    }
  } else if (BuildDoubleBounce(in, options_.double_bounce_address, &msg)) {
    Queue(in, std::move(msg), "double bounce");
  } else {
    log::Mail(m_.envelope().qid(),
              "undeliverable DSN dropped (double_bounce_address empty or a double bounce bounced)");
  }
}

}  // namespace mx::delivery
