// tls_memory.h — the memory of broken STARTTLS (delivery.tls_failure_memory):
// an address where an opportunistic handshake failed gets plaintext at once
// for a while, instead of a failed handshake per message. Thread-safe.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>

#include "mx/common/clock.h"

namespace mx::delivery {

class TlsFailureMemory {
 public:
  // ttl 0: nothing is remembered (STARTTLS is tried every time).
  TlsFailureMemory(const Clock& clock, std::chrono::seconds ttl) : clock_(clock), ttl_(ttl) {}

  // Whether STARTTLS failed at ip less than the TTL ago.
  bool Broken(const std::string& ip);
  void Remember(const std::string& ip);

 private:
  // A bound on memory, not a policy: past it the memory starts afresh.
  static constexpr size_t kMaxAddresses = 100'000;

  const Clock& clock_;
  const std::chrono::seconds ttl_;
  std::mutex mu_;
  std::unordered_map<std::string, int64_t> until_;  // address -> until (µs)
};

}  // namespace mx::delivery
