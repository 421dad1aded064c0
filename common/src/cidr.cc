// cidr.cc — network prefix matching with inet_pton.
#include "mx/common/cidr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace mx {
namespace {

// Parses ip into 16 bytes; IPv4 and IPv4-mapped IPv6 both become v4 (4 bytes used).
bool ParseIp(std::string_view ip, bool* v6, std::array<uint8_t, 16>* out) {
  std::string s(ip);
  out->fill(0);
  in_addr a4{};
  if (inet_pton(AF_INET, s.c_str(), &a4) == 1) {
    *v6 = false;
    std::memcpy(out->data(), &a4, 4);
    return true;
  }
  in6_addr a6{};
  if (inet_pton(AF_INET6, s.c_str(), &a6) == 1) {
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(a6.s6_addr, kMapped, 12) == 0) {
      *v6 = false;
      std::memcpy(out->data(), a6.s6_addr + 12, 4);
    } else {
      *v6 = true;
      std::memcpy(out->data(), a6.s6_addr, 16);
    }
    return true;
  }
  return false;
}

}  // namespace

Result<Cidr> Cidr::Parse(std::string_view text) {
  Cidr c;
  auto slash = text.find('/');
  if (!ParseIp(text.substr(0, slash), &c.v6_, &c.net_)) {
    return Status(Code::kInvalidArgument, "bad network address '" + std::string(text) + "'");
  }
  int max = c.v6_ ? 128 : 32;
  c.prefix_ = max;
  if (slash != std::string_view::npos) {
    auto p = text.substr(slash + 1);
    int v = -1;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (ec != std::errc() || end != p.data() + p.size() || v < 0 || v > max) {
      return Status(Code::kInvalidArgument, "bad prefix length in '" + std::string(text) + "'");
    }
    c.prefix_ = v;
  }
  return c;
}

bool Cidr::Contains(std::string_view ip) const {
  bool v6 = false;
  std::array<uint8_t, 16> a{};
  if (!ParseIp(ip, &v6, &a) || v6 != v6_) return false;
  int full = prefix_ / 8, rem = prefix_ % 8;
  if (std::memcmp(a.data(), net_.data(), full) != 0) return false;
  if (rem == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rem));
  return (a[full] & mask) == (net_[full] & mask);
}

Result<CidrList> CidrList::Parse(const std::vector<std::string>& texts) {
  CidrList list;
  for (const auto& t : texts) {
    auto c = Cidr::Parse(t);
    if (!c.ok()) return c.status();
    list.nets_.push_back(*c);
  }
  return list;
}

bool CidrList::Contains(std::string_view ip) const {
  for (const auto& n : nets_) {
    if (n.Contains(ip)) return true;
  }
  return false;
}

}  // namespace mx
