// auth_throttle.cc — failed AUTH counting per address and per user name.
#include "auth_throttle.h"

#include <algorithm>

namespace mx::ingress {
namespace {

// User names are keys, not identities: a client may send anything, so the
// key is cut (still distinct for every real user name).
constexpr size_t kMaxUserKey = 256;

std::string UserKey(const std::string& user) {
  return user.substr(0, kMaxUserKey);
}

}  // namespace

bool AuthThrottle::Over(const Table& t, const std::string& key, uint32_t limit, int64_t window_us, int64_t now_us) {
  if (limit == 0) return false;
  auto it = t.find(key);
  return it != t.end() && now_us - it->second.start_us < window_us && it->second.failures >= limit;
}

void AuthThrottle::Count(Table& t, const std::string& key, int64_t window_us, int64_t now_us) {
  auto it = t.find(key);
  if (it == t.end()) {
    if (t.size() >= max_keys_) {
      std::erase_if(t, [&](const auto& e) { return now_us - e.second.start_us >= window_us; });
      // Still full (a flood of distinct keys inside one window): make room.
      if (t.size() >= max_keys_) t.erase(t.begin());
    }
    it = t.emplace(key, Window{now_us, 0}).first;
  } else if (now_us - it->second.start_us >= window_us) {
    it->second = Window{now_us, 0};
  }
  ++it->second.failures;
}

AuthThrottle::Verdict AuthThrottle::Check(const std::string& ip, const std::string& user, const Limits& limits,
                                          int64_t now_us) {
  const int64_t window_us = std::chrono::duration_cast<std::chrono::microseconds>(limits.window).count();
  std::lock_guard lock(mu_);
  if (Over(by_ip_, ip, limits.per_ip, window_us, now_us)) return Verdict::kIpBlocked;
  if (Over(by_user_, UserKey(user), limits.per_user, window_us, now_us)) return Verdict::kUserBlocked;
  return Verdict::kOk;
}

void AuthThrottle::Failed(const std::string& ip, const std::string& user, const Limits& limits, int64_t now_us) {
  const int64_t window_us = std::chrono::duration_cast<std::chrono::microseconds>(limits.window).count();
  std::lock_guard lock(mu_);
  if (limits.per_ip > 0) Count(by_ip_, ip, window_us, now_us);
  if (limits.per_user > 0) Count(by_user_, UserKey(user), window_us, now_us);
}

void AuthThrottle::Succeeded(const std::string& user) {
  std::lock_guard lock(mu_);
  by_user_.erase(UserKey(user));
}

size_t AuthThrottle::tracked() const {
  std::lock_guard lock(mu_);
  return by_ip_.size() + by_user_.size();
}

}  // namespace mx::ingress
