// headers_fuzz.cc — libFuzzer target: the RFC 5322 header scanner ingress
// runs over every message (Received count, Message-ID, Precedence, folding)
// and the address helpers applied to envelope paths.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mx/common/address.h"
#include "mx/common/rfc5322.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)mx::ScanHeaders(text);
  (void)mx::PrecedenceClass(text);
  (void)mx::DomainOf(text);
  (void)mx::InDomain(mx::DomainOf(text), "example.test");
  return 0;
}
