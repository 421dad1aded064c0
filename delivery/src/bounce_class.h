// bounce_class.h — why a recipient was not delivered, as a class an operator
// can count and act on: the remote reply (or local reason) and its enhanced
// status code, read through a rule table.
//
// Text rules come first (what providers write is more specific than the code
// they pick: Gmail's 5.7.1 may be spam or policy), then the enhanced status
// code (RFC 3463 subject.detail), then the reply code's first digit.
#pragma once

#include <string_view>

namespace mx::delivery {

enum class BounceClass {
  kInvalidRecipient,  // no such mailbox, bad address syntax, moved
  kBadDomain,         // no such domain, null MX, no route
  kSpamBlock,         // refused as spam, block lists, sender reputation, complaints
  kContent,           // the message itself: virus, attachment, size, headers
  kPolicy,            // authentication (SPF, DKIM, DMARC), relaying, rate limits, TLS
  kQuota,             // mailbox full, over quota
  kNoAnswer,          // no connection, timeouts, connection lost, DNS trouble
  kExpired,           // gave up: queue_return passed (4.4.7)
  kOther,             // anything else
};

// "invalid_recipient", "bad_domain", ... (labels and log values).
std::string_view BounceClassName(BounceClass c);

// reply: "550 5.1.1 <x@example.com>: user unknown", or a local reason
// ("Connection refused with mx.example.com [192.0.2.1]"); dsn_status: the
// enhanced code mx settled on ("5.1.1"), may be empty.
BounceClass ClassifyReply(std::string_view reply, std::string_view dsn_status);

}  // namespace mx::delivery
