// cidr.h — IPv4/IPv6 network matching (mynetworks, access map Connect: keys).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mx/common/result.h"

namespace mx {

class Cidr {
 public:
  // "192.0.2.0/24", "2001:db8::/32", or a bare address (host route).
  static Result<Cidr> Parse(std::string_view text);
  bool Contains(std::string_view ip) const;

 private:
  bool v6_ = false;
  std::array<uint8_t, 16> net_{};
  int prefix_ = 0;
};

class CidrList {
 public:
  static Result<CidrList> Parse(const std::vector<std::string>& texts);
  bool Contains(std::string_view ip) const;

 private:
  std::vector<Cidr> nets_;
};

}  // namespace mx
