// assemble.cc — Message-ID, DKIM and Received: around an accepted message.
#include "assemble.h"

namespace mx::ingress {

Result<AssembledMessage> AssembleMessage(const Policy& policy, std::string_view data, const std::string& received,
                                         const std::string& qid, const std::string& hostname, bool sign,
                                         int64_t now_unix_us, SessionObserver* observer) {
  AssembledMessage out;
  out.facts = ScanHeaders(data);
  out.msgid = out.facts.message_id;
  std::string added;  // header fields we add above the submitter's
  if (!out.facts.has_message_id) {
    out.msgid = "<" + qid + "@" + hostname + ">";
    added = "Message-ID: " + out.msgid + "\r\n";
  }
  // The signatures go on top, above our Received: (which they do not cover).
  if (sign && !policy.dkim().empty()) {
    auto sig = policy.dkim().Sign(added, data, now_unix_us / 1'000'000);
    if (!sig.ok()) {
      if (observer) observer->OnDkim("", false);
      return sig.status();
    }
    out.body = std::move(sig->headers);
    out.dkim_domain = std::move(sig->domain);
    out.algorithms = std::move(sig->algorithms);
    if (out.algorithms.empty()) out.dkim_domain.clear();
    for (size_t i = 0; i < out.algorithms.size(); ++i) {
      out.dkim_log += (i ? "," : ", dkim=" + out.dkim_domain + " ") + out.algorithms[i];
      if (observer) observer->OnDkim(out.algorithms[i], true);
    }
  }
  out.body.reserve(out.body.size() + received.size() + added.size() + data.size());
  out.body += received;
  out.body += added;
  out.body += data;
  return out;
}

}  // namespace mx::ingress
