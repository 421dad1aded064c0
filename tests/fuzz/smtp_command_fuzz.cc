// smtp_command_fuzz.cc — libFuzzer target: one SMTP command line, and the
// MAIL/RCPT path argument parser on whatever follows the verb.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "smtp_command.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  mx::ingress::Command cmd = mx::ingress::ParseCommand(line);
  (void)mx::ingress::ParsePathArg(cmd.arg, "FROM:", /*allow_null=*/true);
  (void)mx::ingress::ParsePathArg(cmd.arg, "TO:", /*allow_null=*/false);
  (void)mx::ingress::ParsePathArg(line, "FROM:", true);
  return 0;
}
