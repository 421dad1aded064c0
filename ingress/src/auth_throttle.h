// auth_throttle.h — AUTH brute-force protection shared by every session of
// an ingress node (Postfix's smtpd_client_auth_rate_limit, per user too).
//
// Failed authentications are counted per client address and per user name
// in a fixed window. Past a limit, AUTH from that address — or for that user,
// from anywhere — is refused without looking at the password until the
// window ends, so guessing costs the attacker the window, not a crypt(3).
// Memory is bounded: at most `max_keys` addresses and as many user names are
// tracked; expired windows are swept first, then arbitrary entries go.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace mx::ingress {

class AuthThrottle {
 public:
  struct Limits {
    uint32_t per_ip = 0;    // failures per address per window (0: no limit)
    uint32_t per_user = 0;  // failures per user name per window (0: no limit)
    std::chrono::seconds window{600};
  };
  enum class Verdict { kOk, kIpBlocked, kUserBlocked };

  explicit AuthThrottle(size_t max_keys = 65536) : max_keys_(max_keys) {}

  // May `ip` try to authenticate as `user` now?
  Verdict Check(const std::string& ip, const std::string& user, const Limits& limits, int64_t now_us);
  // A failed attempt (wrong password, unknown user, refused identity).
  void Failed(const std::string& ip, const std::string& user, const Limits& limits, int64_t now_us);
  // The user proved the password: its failures are forgotten (the address's are not).
  void Succeeded(const std::string& user);

  size_t tracked() const;

 private:
  struct Window {
    int64_t start_us = 0;
    uint32_t failures = 0;
  };
  using Table = std::unordered_map<std::string, Window>;
  static bool Over(const Table& t, const std::string& key, uint32_t limit, int64_t window_us, int64_t now_us);
  void Count(Table& t, const std::string& key, int64_t window_us, int64_t now_us);

  const size_t max_keys_;
  mutable std::mutex mu_;
  Table by_ip_, by_user_;
};

}  // namespace mx::ingress
