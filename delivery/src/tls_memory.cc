// tls_memory.cc — addresses whose STARTTLS failed, until their memory expires.
#include "tls_memory.h"

namespace mx::delivery {

bool TlsFailureMemory::Broken(const std::string& ip) {
  std::lock_guard lock(mu_);
  auto it = until_.find(ip);
  if (it == until_.end()) return false;
  if (clock_.NowUnixMicros() < it->second) return true;
  until_.erase(it);
  return false;
}

void TlsFailureMemory::Remember(const std::string& ip) {
  const int64_t ttl = std::chrono::duration_cast<std::chrono::microseconds>(ttl_).count();
  if (ttl <= 0) return;
  std::lock_guard lock(mu_);
  if (until_.size() > kMaxAddresses) until_.clear();
  until_[ip] = clock_.NowUnixMicros() + ttl;
}

}  // namespace mx::delivery
