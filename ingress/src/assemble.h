// assemble.h — what ingress adds to an accepted message before it is queued,
// the same for SMTP (Session) and the injection API: Message-ID when the
// message has none, DKIM signatures for trusted submitters, our Received:.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "mx/common/result.h"
#include "mx/common/rfc5322.h"
#include "mx/ingress/policy.h"
#include "session.h"

namespace mx::ingress {

struct AssembledMessage {
  std::string body;                     // DKIM-Signature fields, Received:, Message-ID: when added, then the message
  std::string msgid;                    // the message's Message-ID (or the one added)
  HeaderFacts facts;                    // of the message as submitted
  std::string dkim_domain;              // d= of the signatures ("" when not signed)
  std::vector<std::string> algorithms;  // one per signature
  std::string dkim_log;                 // ", dkim=example.com rsa-sha256,ed25519-sha256" ("" when not signed)
};

// received: our whole Received: field (with its CRLF). sign: the submitter
// is trusted, so mail from a domain with keys is signed; each signature (or
// the failure) is reported to observer when given. Fails only when signing
// failed (the caller answers 451 4.7.5).
Result<AssembledMessage> AssembleMessage(const Policy& policy, std::string_view data, const std::string& received,
                                         const std::string& qid, const std::string& hostname, bool sign,
                                         int64_t now_unix_us, SessionObserver* observer);

}  // namespace mx::ingress
