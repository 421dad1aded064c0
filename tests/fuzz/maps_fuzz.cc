// maps_fuzz.cc — libFuzzer target: the sendmail-format map parsers (aliases,
// virtusertable, AUTH users, class files), access right-hand sides and
// reply normalisation, all on the same input.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mx/ingress/maps.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)mx::ingress::AliasMap::Parse(text, "aliases");
  (void)mx::ingress::VirtuserTable::Parse(text, "virtusertable");
  (void)mx::ingress::AuthUsers::Parse(text, "users");
  (void)mx::ingress::ParseClassFile(text, "local-host-names");
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string_view line = text.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    (void)mx::ingress::ParseAccessValue(line);
    (void)mx::ingress::NormalizeReply(line, "7.1", "Access denied");
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  return 0;
}
