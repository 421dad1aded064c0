// base64.h — RFC 4648 base64 (SMTP AUTH, DSN xtext helpers live elsewhere).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace mx {

std::string Base64Encode(std::string_view data);
// Strict decoding: padding required, no whitespace; nullopt when malformed.
std::optional<std::string> Base64Decode(std::string_view text);

}  // namespace mx
