// permit_client.h — delivery's side of the cluster-wide limits kept by the
// metadata shard's leader (queue/src/permits.h): connection slots held while
// a connection lives (renewed every third of their TTL) and turns under a
// rate. An unreachable leader is a refusal: limits fail closed.
#pragma once

#include <utility>  // before Boost.Asio's awaitable.hpp, which uses std::exchange

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "mx/delivery/shaping.h"
#include "mx/queue/client.h"
#include "queue_link.h"

namespace mx::delivery {

struct PermitAnswer {
  bool granted = false;
  std::chrono::milliseconds retry_after{0};
};

class PermitClient {
 public:
  static constexpr auto kRenewEvery = std::chrono::microseconds(queue::kPermitTtlUs / 3);

  // calls counts the Permit RPCs in flight (the worker waits for them at Stop).
  PermitClient(MetadataLink& link, InFlightCalls& calls) : link_(link), calls_(calls) {}

  // One Permit call; the answer resumes the caller on its own executor.
  boost::asio::awaitable<PermitAnswer> Ask(v1::PermitRequest req);
  // The turn under key for one event of rate (a site's messages or new
  // connections); false when it would not come before deadline. Key by
  // value: a coroutine outlives its caller's temporaries.
  boost::asio::awaitable<bool> AwaitRate(std::string key, RateLimit rate,
                                         std::chrono::steady_clock::time_point deadline);
  // One ACQUIRE of every key's slot for holder; a granted hold is kept (and
  // renewed by RenewAll) until Release.
  boost::asio::awaitable<PermitAnswer> Acquire(std::string holder, std::vector<v1::PermitKey> keys);
  // Gives holder's slots back (asynchronous; an unreleased hold expires with its TTL).
  void Release(const std::string& holder);
  // One RENEW of every live hold; nothing when none.
  void RenewAll();
  size_t holds() const;

 private:
  MetadataLink& link_;
  InFlightCalls& calls_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::vector<v1::PermitKey>> holds_;  // live holds by holder
};

}  // namespace mx::delivery
