// rfc5322.cc — dates and header scanning.
#include "mx/common/rfc5322.h"

#include <ctime>

#include "mx/common/address.h"

namespace mx {

std::string Rfc5322Date(int64_t unix_us) {
  time_t t = static_cast<time_t>(unix_us / 1'000'000);
  tm tm{};
  gmtime_r(&t, &tm);
  static const char* const kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[tm.tm_wday], tm.tm_mday, kMonths[tm.tm_mon],
           tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

int PrecedenceClass(std::string_view value) {
  auto v = ToLower(Trim(value));
  if (v == "first-class") return 0;
  if (v == "special-delivery") return 100;
  if (v == "list") return -30;
  if (v == "bulk") return -60;
  if (v == "junk") return -100;
  return 0;
}

HeaderFacts ScanHeaders(std::string_view msg) {
  HeaderFacts f;
  size_t pos = 0;
  while (pos < msg.size()) {
    size_t eol = msg.find('\n', pos);
    size_t next = eol == std::string_view::npos ? msg.size() : eol + 1;
    std::string_view line = msg.substr(pos, next - pos);
    if (line == "\r\n" || line == "\n") {
      pos = next;
      break;
    }
    if (line.front() != ' ' && line.front() != '\t') {
      auto colon = line.find(':');
      if (colon != std::string_view::npos) {
        auto name = ToLower(line.substr(0, colon));
        auto value = line.substr(colon + 1);
        while (!value.empty() && (value.back() == '\n' || value.back() == '\r')) value.remove_suffix(1);
        if (name == "message-id") {
          f.has_message_id = true;
          f.message_id = std::string(Trim(value));
        } else if (name == "precedence") {
          f.precedence_class = PrecedenceClass(value);
        } else if (name == "received") {
          ++f.received_count;
        }
      } else {
        break;  // not a header line: the body started without an empty line
      }
    }
    pos = next;
  }
  f.header_bytes = pos;
  return f;
}

}  // namespace mx
