// rfc5322.h — message-format helpers shared by ingress (trace headers) and
// delivery (DSNs).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mx {

// "Sun, 22 Nov 2026 19:43:01 +0000"
std::string Rfc5322Date(int64_t unix_us);

// Facts about a message's header block (up to the first empty line).
struct HeaderFacts {
  bool has_message_id = false;
  std::string message_id;
  int precedence_class = 0;  // sendmail Precedence classes
  int received_count = 0;
  size_t header_bytes = 0;  // length of the header block incl. the empty line
};
HeaderFacts ScanHeaders(std::string_view message);

// sendmail's class for a Precedence: value (first-class 0, special-delivery 100,
// list -30, bulk -60, junk -100; unknown 0).
int PrecedenceClass(std::string_view value);

}  // namespace mx
