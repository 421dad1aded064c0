// dsn.h — RFC 3464 delivery status notifications (bounces).
#pragma once

#include <string>
#include <vector>

#include "mx/v1/types.pb.h"

namespace mx::delivery {

struct FailedRecipient {
  std::string address;
  std::string orcpt;
  std::string status;      // enhanced code, e.g. 5.1.1
  std::string remote_mta;  // host that answered, or ""
  std::string diagnostic;  // the remote reply or local reason
};

struct DsnInput {
  v1::Envelope original;
  std::string original_body;
  std::vector<FailedRecipient> failed;
  std::string reporting_mta;  // our hostname
  std::string dsn_qid;        // queue id of the DSN itself
  int64_t now_unix_us = 0;
};

// Builds a multipart/report DSN from <> to the original sender. Returns false
// (and builds nothing) when no DSN must be sent: null sender, or the original
// is itself a DSN (a double bounce is left to the operator's postmaster).
bool BuildDsn(const DsnInput& in, v1::NewMessage* out);

}  // namespace mx::delivery
