// address.h — small helpers for RFC 5321 mailbox strings.
#pragma once

#include <string>
#include <string_view>

namespace mx {

// Domain part of local@domain, lower-cased; "" if there is none.
std::string DomainOf(std::string_view address);
// Whether domain is parent or one of its subdomains (both lower-case):
// "mx.example.com" is in "example.com", "badexample.com" is not.
bool InDomain(std::string_view domain, std::string_view parent);
std::string ToLower(std::string_view s);
// Trims ASCII spaces and tabs at both ends.
std::string_view Trim(std::string_view s);

}  // namespace mx
