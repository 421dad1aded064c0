// dsn.cc — RFC 3464 multipart/report messages and RFC 3461 NOTIFY rules.
#include "dsn.h"

#include <algorithm>
#include <string_view>

#include "mx/common/log.h"
#include "mx/common/rfc5322.h"

namespace mx::delivery {
namespace {

std::string Hours(int64_t us) {
  int64_t d = us / 86'400'000'000;
  if (d >= 2) return std::to_string(d) + " days";
  int64_t h = us / 3'600'000'000;
  if (h >= 1) return std::to_string(h) + (h == 1 ? " hour" : " hours");
  int64_t m = us / 60'000'000;
  if (m >= 1) return std::to_string(m) + (m == 1 ? " minute" : " minutes");
  return std::to_string(us / 1'000'000) + " seconds";
}

// A value from outside — a remote server's reply, a remote host's name, a
// client's address, ORCPT or ENVID, a client's host name — made fit for a
// line of mx's 7-bit report: control characters (a bare CR or LF would start
// a field of the sender's choosing) become spaces, 8-bit octets '?', and it
// is cut to kMaxValue octets so that no line passes RFC 5322's 998.
constexpr size_t kMaxValue = 900;

std::string Safe(std::string_view v) {
  std::string out;
  out.reserve(std::min(v.size(), kMaxValue));
  for (char ch : v) {
    if (out.size() >= kMaxValue) {
      out.replace(kMaxValue - 3, 3, "...");
      break;
    }
    const auto c = static_cast<unsigned char>(ch);
    out += c < 0x20 || c == 0x7f ? ' ' : c >= 0x80 ? '?' : ch;
  }
  return out;
}

}  // namespace

bool DsnWanted(const v1::Envelope& env, uint32_t notify, DsnAction action) {
  if (env.sender().empty()) return false;  // nothing is ever reported to <>
  if (notify & v1::NOTIFY_NEVER) return false;
  switch (action) {
    case DsnAction::kFailed: return notify == 0 || (notify & v1::NOTIFY_FAILURE);
    case DsnAction::kDelayed:
      if (env.precedence_class() < 0) return false;  // list, bulk, junk: no warnings
      return notify == 0 || (notify & v1::NOTIFY_DELAY);
    case DsnAction::kRelayed: return (notify & v1::NOTIFY_SUCCESS) != 0;
  }
  return false;
}

DsnOwed SettleOutcome(const v1::Envelope& env, const v1::Recipient& rcpt, bool dsn_forwarded, int64_t age_us,
                      int64_t warn_us, int64_t return_us, v1::Outcome* outcome, std::string* reply,
                      std::string* dsn_status) {
  if (*outcome == v1::OUTCOME_DEFERRED && age_us >= return_us) {  // Timeout.queuereturn: final
    *outcome = v1::OUTCOME_BOUNCED;
    *reply = "Cannot send message for " + log::FormatDelay(age_us) + " (last: " + *reply + ")";
    *dsn_status = "4.4.7";
  }
  switch (*outcome) {
    case v1::OUTCOME_BOUNCED:
      return DsnWanted(env, rcpt.notify(), DsnAction::kFailed) || env.is_dsn() ? DsnOwed::kFailed : DsnOwed::kNone;
    case v1::OUTCOME_DEFERRED:
      return age_us >= warn_us && !rcpt.delay_warned() && DsnWanted(env, rcpt.notify(), DsnAction::kDelayed)
                 ? DsnOwed::kDelayed
                 : DsnOwed::kNone;
    case v1::OUTCOME_DELIVERED:
      return !dsn_forwarded && DsnWanted(env, rcpt.notify(), DsnAction::kRelayed) ? DsnOwed::kRelayed : DsnOwed::kNone;
    default: return DsnOwed::kNone;
  }
}

bool BuildDsn(const DsnInput& in, v1::NewMessage* out) {
  const auto& orig = in.original;
  const std::string to = in.to.empty() ? orig.sender() : in.to;
  if (to.empty() || in.rcpts.empty()) return false;
  const std::string boundary = in.dsn_qid + "/" + in.reporting_mta;
  const std::string to_field = Safe(to);
  const std::string date = Rfc5322Date(in.now_unix_us);
  const char* action = in.action == DsnAction::kFailed    ? "failed"
                       : in.action == DsnAction::kDelayed ? "delayed"
                                                          : "relayed";
  std::string subject;
  switch (in.action) {
    case DsnAction::kFailed: subject = "Returned mail: see transcript for details"; break;
    case DsnAction::kDelayed: subject = "Warning: could not send message for past " + Hours(in.queue_warn_us); break;
    case DsnAction::kRelayed: subject = "Return receipt: message relayed"; break;
  }
  if (!in.to.empty() && in.action == DsnAction::kFailed) subject = "Postmaster notify: see transcript for details";
  std::string m;
  m += "Date: " + date + "\r\n";
  m += "From: Mail Delivery Subsystem <MAILER-DAEMON@" + in.reporting_mta + ">\r\n";
  m += "To: <" + to_field + ">\r\n";
  m += "Subject: " + subject + "\r\n";
  m += "Message-ID: <" + in.dsn_qid + "@" + in.reporting_mta + ">\r\n";
  m += "Auto-Submitted: auto-replied\r\n";
  m += "MIME-Version: 1.0\r\n";
  m += "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"" + boundary + "\"\r\n";
  m += "\r\nThis is a MIME-encapsulated message\r\n\r\n";
  m += "--" + boundary + "\r\n";
  m += "Content-Type: text/plain; charset=us-ascii\r\n\r\n";
  m += "The original message was received at " + Rfc5322Date(orig.arrival_unix_us()) + "\r\n";
  m += "from " + (orig.client_name().empty() ? std::string("unknown") : Safe(orig.client_name())) + " [" +
       Safe(orig.client_addr()) + "]\r\n\r\n";
  switch (in.action) {
    case DsnAction::kFailed: m += "   ----- The following addresses had permanent fatal errors -----\r\n"; break;
    case DsnAction::kDelayed: m += "   ----- The following addresses had transient non-fatal errors -----\r\n"; break;
    case DsnAction::kRelayed:
      m += "   ----- The following addresses were relayed to a system that does not send receipts -----\r\n";
      break;
  }
  for (const auto& r : in.rcpts) m += "<" + Safe(r.address) + ">\r\n    (reason: " + Safe(r.diagnostic) + ")\r\n";
  if (in.action == DsnAction::kDelayed) {
    m += "\r\nWarning: message still undelivered after " + Hours(in.queue_warn_us) + "\r\n";
    m += "Will keep trying until message is " + Hours(in.retry_until_us - orig.arrival_unix_us()) + " old\r\n";
  }
  m += "\r\n--" + boundary + "\r\n";
  m += "Content-Type: message/delivery-status\r\n\r\n";
  m += "Reporting-MTA: dns; " + in.reporting_mta + "\r\n";
  if (!orig.envid().empty()) m += "Original-Envelope-Id: " + Safe(orig.envid()) + "\r\n";
  m += "Arrival-Date: " + Rfc5322Date(orig.arrival_unix_us()) + "\r\n";
  for (const auto& r : in.rcpts) {
    m += "\r\n";
    if (!r.orcpt.empty()) {
      const std::string orcpt = Safe(r.orcpt);
      auto semi = orcpt.find(';');
      m += "Original-Recipient: " +
           (semi == std::string::npos ? orcpt : orcpt.substr(0, semi) + "; " + orcpt.substr(semi + 1)) + "\r\n";
    }
    m += "Final-Recipient: rfc822; " + Safe(r.address) + "\r\n";
    m += std::string("Action: ") + action + "\r\n";
    m += "Status: " + Safe(r.status) + "\r\n";
    if (!r.remote_mta.empty()) m += "Remote-MTA: dns; " + Safe(r.remote_mta) + "\r\n";
    if (!r.diagnostic.empty()) m += "Diagnostic-Code: smtp; " + Safe(r.diagnostic) + "\r\n";
    m += "Last-Attempt-Date: " + date + "\r\n";
    if (in.action == DsnAction::kDelayed && in.retry_until_us) {
      m += "Will-Retry-Until: " + Rfc5322Date(in.retry_until_us) + "\r\n";
    }
  }
  // Only failures return the message, and then not for RET=HDRS or negative
  // precedence (bulk, list, junk).
  bool headers_only =
      in.headers_only || in.action != DsnAction::kFailed || orig.precedence_class() < 0 || orig.ret() == "HDRS";
  m += "\r\n--" + boundary + "\r\n";
  if (headers_only) {
    m += "Content-Type: text/rfc822-headers\r\n\r\n";
    HeaderFacts facts = ScanHeaders(in.original_body);
    m.append(in.original_body, 0, facts.header_bytes);
  } else {
    m += "Content-Type: message/rfc822\r\n\r\n";
    m += in.original_body;
    if (m.size() < 2 || m.compare(m.size() - 2, 2, "\r\n") != 0) m += "\r\n";
  }
  m += "\r\n--" + boundary + "--\r\n";

  out->Clear();
  auto* env = out->mutable_envelope();
  env->set_qid(in.dsn_qid);
  env->set_sender("");
  env->set_size(m.size());
  env->set_arrival_unix_us(in.now_unix_us);
  env->set_is_dsn(true);
  env->set_msgid("<" + in.dsn_qid + "@" + in.reporting_mta + ">");
  env->set_received_by(in.reporting_mta);
  env->set_body_type("7BIT");
  env->set_mailer_from("local");
  out->add_recipients()->set_address(to);
  out->set_body(std::move(m));
  return true;
}

bool BuildDoubleBounce(DsnInput in, const std::string& double_bounce_address, v1::NewMessage* out) {
  if (double_bounce_address.empty() || in.original.double_bounce()) return false;
  in.action = DsnAction::kFailed;
  in.to = double_bounce_address.find('@') == std::string::npos ? double_bounce_address + "@" + in.reporting_mta
                                                               : double_bounce_address;
  in.headers_only = true;
  if (!BuildDsn(in, out)) return false;
  out->mutable_envelope()->set_double_bounce(true);
  return true;
}

}  // namespace mx::delivery
