// dsn_fuzz.cc — libFuzzer target: DSNs built from what strangers control —
// the remote server's reply (Diagnostic-Code), the remote host's name, the
// client's ORCPT, ENVID and addresses, and the returned message itself. The
// report mx writes must stay a well-formed 7-bit message whatever they hold:
// CRLF line ends only, no control characters, no line over 998 octets, and no
// field of its own forged from inside a value (header injection).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "dsn.h"

namespace {

// Splits the input into n pieces at 0xFE bytes (missing ones are empty).
std::string_view Piece(std::string_view data, int n) {
  for (int i = 0; i < n; ++i) {
    auto p = data.find('\xfe');
    if (p == std::string_view::npos) return {};
    data.remove_prefix(p + 1);
  }
  return data.substr(0, data.find('\xfe'));
}

// What ingress lets through as a message: CRLF line ends only.
std::string AsMessage(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\r') continue;
    if (c == '\n')
      out += "\r\n";
    else
      out += c;
  }
  return out;
}

void Check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "DSN invariant broken: %s\n", what);
    abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  mx::delivery::DsnInput d;
  const uint8_t mode = size ? data[0] : 0;
  d.action = mode % 3 == 0   ? mx::delivery::DsnAction::kFailed
             : mode % 3 == 1 ? mx::delivery::DsnAction::kDelayed
                             : mx::delivery::DsnAction::kRelayed;
  d.original.set_sender(std::string(Piece(in, 1)));
  d.original.set_envid(std::string(Piece(in, 2)));
  d.original.set_client_name(std::string(Piece(in, 3)));
  d.original.set_client_addr("192.0.2.1");
  d.original.set_arrival_unix_us(1'700'000'000'000'000);
  if (mode & 4) d.original.set_ret("HDRS");
  d.original_body = AsMessage(Piece(in, 4));
  for (int r = 0; r < 2; ++r) {
    mx::delivery::DsnRecipient rc;
    rc.address = std::string(Piece(in, 5 + 4 * r));
    rc.orcpt = std::string(Piece(in, 6 + 4 * r));
    rc.remote_mta = std::string(Piece(in, 7 + 4 * r));
    rc.diagnostic = std::string(Piece(in, 8 + 4 * r));
    rc.status = "5.1.1";
    d.rcpts.push_back(std::move(rc));
  }
  d.reporting_mta = "mx.example.test";
  d.dsn_qid = "08DsnFuzz0000";
  d.now_unix_us = 1'700'000'100'000'000;
  d.queue_warn_us = 4LL * 3600 * 1'000'000;
  d.retry_until_us = d.original.arrival_unix_us() + 5LL * 86400 * 1'000'000;
  mx::v1::NewMessage out;
  if (!mx::delivery::BuildDsn(d, &out)) return 0;
  const std::string& m = out.body();
  // Everything up to the returned message is mx's own text.
  const std::string boundary = "--" + d.dsn_qid + "/" + d.reporting_mta + "\r\n";
  size_t third = m.find(boundary);
  for (int i = 0; i < 2 && third != std::string::npos; ++i) third = m.find(boundary, third + 1);
  Check(third != std::string::npos, "three MIME parts");
  const std::string_view own(m.data(), third);
  size_t line_start = 0;
  bool in_status = false;
  for (size_t i = 0; i < own.size(); ++i) {
    const auto c = static_cast<unsigned char>(own[i]);
    if (c == '\n') Check(i > 0 && own[i - 1] == '\r', "bare LF");
    if (c == '\r') Check(i + 1 < own.size() && own[i + 1] == '\n', "bare CR");
    Check(c == '\r' || c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f), "a control or 8-bit octet");
    if (c == '\n') {
      const std::string_view line = own.substr(line_start, i - 1 - line_start);
      Check(line.size() <= 998, "a line over 998 octets");
      if (line == "Content-Type: message/delivery-status") in_status = true;
      // In the delivery-status part every line is a field of its own, a
      // folded continuation, or empty: no value spills into a new field.
      if (in_status && !line.empty() && line[0] != ' ' && line[0] != '\t' && line.substr(0, 2) != "--") {
        static constexpr std::string_view kFields[] = {"Content-Type:",
                                                       "Reporting-MTA:",
                                                       "Original-Envelope-Id:",
                                                       "Arrival-Date:",
                                                       "Original-Recipient:",
                                                       "Final-Recipient:",
                                                       "Action:",
                                                       "Status:",
                                                       "Remote-MTA:",
                                                       "Diagnostic-Code:",
                                                       "Last-Attempt-Date:",
                                                       "Will-Retry-Until:"};
        bool known = false;
        for (auto f : kFields) known |= line.substr(0, f.size()) == f;
        Check(known, "a field forged from inside a value");
      }
      line_start = i + 1;
    }
  }
  return 0;
}
