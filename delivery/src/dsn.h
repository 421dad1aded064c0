// dsn.h — RFC 3464 delivery status notifications: bounces, delay warnings,
// "relayed" receipts for NOTIFY=SUCCESS, double bounces and the
// postmaster's copy — and the rules for when each is due (RFC 3461 NOTIFY,
// RET, sendmail's treatment of <> and negative Precedence).
#pragma once

#include <string>
#include <vector>

#include "mx/v1/queue.pb.h"  // Outcome
#include "mx/v1/types.pb.h"

namespace mx::delivery {

// RFC 3464 2.3.3 Action.
enum class DsnAction { kFailed, kDelayed, kRelayed };

struct DsnRecipient {
  std::string address;
  std::string orcpt;       // RFC 3461 ORCPT ("rfc822;xtext") or ""
  std::string status;      // enhanced code, e.g. 5.1.1
  std::string remote_mta;  // host that answered, or ""
  std::string diagnostic;  // the remote reply or local reason
};

struct DsnInput {
  DsnAction action = DsnAction::kFailed;
  v1::Envelope original;
  std::string original_body;
  std::vector<DsnRecipient> rcpts;
  std::string reporting_mta;  // our hostname
  std::string dsn_qid;        // queue id of the DSN itself
  int64_t now_unix_us = 0;
  int64_t queue_warn_us = 0;   // kDelayed: how long it has waited (for the text)
  int64_t retry_until_us = 0;  // kDelayed: Will-Retry-Until (arrival + queue_return)
  std::string to;              // "" = the original sender; else (postmaster) this address
  bool headers_only = false;   // force text/rfc822-headers (postmaster copy)
};

// Whether a recipient's NOTIFY (and the message's sender and Precedence)
// asks for a DSN of this kind. Never to <>; NEVER suppresses all; the default
// (no NOTIFY) is FAILURE,DELAY; no delay warnings for negative Precedence.
bool DsnWanted(const v1::Envelope& env, uint32_t notify, DsnAction action);

// The DSN a recipient's outcome owes, if any, given how long the message has
// been queued (age). Timeout.queuereturn first turns a deferral of a message
// at least return_us old into a bounce (*outcome, *reply, *dsn_status are
// rewritten: 4.4.7 "Cannot send message for …"). Then: a bounce owes kFailed
// (when NOTIFY asks for it, and always for a DSN that bounced: the double
// bounce); a deferral at least warn_us old owes one kDelayed per recipient
// (not once delay_warned); a delivery to a peer that did not take over the
// NOTIFY request owes kRelayed for NOTIFY=SUCCESS.
enum class DsnOwed { kNone, kFailed, kDelayed, kRelayed };
DsnOwed SettleOutcome(const v1::Envelope& env, const v1::Recipient& rcpt, bool dsn_forwarded, int64_t age_us,
                      int64_t warn_us, int64_t return_us, v1::Outcome* outcome, std::string* reply,
                      std::string* dsn_status);

// Builds a multipart/report DSN from <> to in.to (default: the original
// sender). Failed DSNs return the full message unless RET=HDRS or negative
// Precedence; delayed and relayed ones return headers only. Returns false
// (and builds nothing) when no DSN can be sent: no recipients, or a <>
// original that is not to be reported to a postmaster (see DoubleBounce).
bool BuildDsn(const DsnInput& in, v1::NewMessage* out);

// A bounce of a bounce goes to double_bounce_address, headers only, marked so
// that it is never reported on again. False when it must be dropped (an
// empty address, or the original already was a double bounce).
bool BuildDoubleBounce(DsnInput in, const std::string& double_bounce_address, v1::NewMessage* out);

}  // namespace mx::delivery
