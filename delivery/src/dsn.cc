// dsn.cc — RFC 3464 multipart/report bounce messages.
#include "mx/delivery/dsn.h"

#include "mx/common/rfc5322.h"

namespace mx::delivery {

bool BuildDsn(const DsnInput& in, v1::NewMessage* out) {
  const auto& orig = in.original;
  if (orig.sender().empty() || orig.is_dsn() || in.failed.empty()) return false;
  const std::string boundary = in.dsn_qid + "/" + in.reporting_mta;
  const std::string date = Rfc5322Date(in.now_unix_us);
  std::string m;
  m += "Date: " + date + "\r\n";
  m += "From: Mail Delivery Subsystem <MAILER-DAEMON@" + in.reporting_mta + ">\r\n";
  m += "To: <" + orig.sender() + ">\r\n";
  m += "Subject: Returned mail: see transcript for details\r\n";
  m += "Message-ID: <" + in.dsn_qid + "@" + in.reporting_mta + ">\r\n";
  m += "Auto-Submitted: auto-replied\r\n";
  m += "MIME-Version: 1.0\r\n";
  m += "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"" + boundary + "\"\r\n";
  m += "\r\nThis is a MIME-encapsulated message\r\n\r\n";
  m += "--" + boundary + "\r\n";
  m += "Content-Type: text/plain; charset=us-ascii\r\n\r\n";
  m += "The original message was received at " + Rfc5322Date(orig.arrival_unix_us()) + "\r\n";
  m += "from " + (orig.client_name().empty() ? std::string("unknown") : orig.client_name()) + " [" +
       orig.client_addr() + "]\r\n\r\n";
  m += "   ----- The following addresses had permanent fatal errors -----\r\n";
  for (const auto& f : in.failed) m += "<" + f.address + ">\r\n    (reason: " + f.diagnostic + ")\r\n";
  m += "\r\n--" + boundary + "\r\n";
  m += "Content-Type: message/delivery-status\r\n\r\n";
  m += "Reporting-MTA: dns; " + in.reporting_mta + "\r\n";
  if (!orig.envid().empty()) m += "Original-Envelope-Id: " + orig.envid() + "\r\n";
  m += "Arrival-Date: " + Rfc5322Date(orig.arrival_unix_us()) + "\r\n";
  for (const auto& f : in.failed) {
    m += "\r\n";
    if (!f.orcpt.empty()) m += "Original-Recipient: " + f.orcpt + "\r\n";
    m += "Final-Recipient: rfc822; " + f.address + "\r\n";
    m += "Action: failed\r\n";
    m += "Status: " + f.status + "\r\n";
    if (!f.remote_mta.empty()) m += "Remote-MTA: dns; " + f.remote_mta + "\r\n";
    m += "Diagnostic-Code: smtp; " + f.diagnostic + "\r\n";
    m += "Last-Attempt-Date: " + date + "\r\n";
  }
  // Negative precedence (bulk, list, junk) and RET=HDRS return headers only.
  bool headers_only = orig.precedence_class() < 0 || orig.ret() == "HDRS";
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
  out->add_recipients()->set_address(orig.sender());
  out->set_body(std::move(m));
  return true;
}

}  // namespace mx::delivery
