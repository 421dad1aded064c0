// address.cc — mailbox string helpers.
#include "mx/common/address.h"

#include <cctype>

namespace mx {

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string DomainOf(std::string_view address) {
  auto at = address.rfind('@');
  if (at == std::string_view::npos) return {};
  return ToLower(address.substr(at + 1));
}

bool InDomain(std::string_view domain, std::string_view parent) {
  if (domain == parent) return true;
  return !parent.empty() && domain.size() > parent.size() && domain.ends_with(parent) &&
         domain[domain.size() - parent.size() - 1] == '.';
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace mx
