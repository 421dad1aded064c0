// suppressions.h — the cluster's suppression list as ingress checks it at RCPT.
//
// SuppressionSet holds a 64-bit hash of every suppressed address (about 40
// bytes an address), so a check is a lookup, never an RPC. SuppressionFollower
// keeps it current from shard 0's change log (ListSuppressions after the last
// sequence number seen, every 2 s; from the start when the process starts).
// A failed poll keeps the set as it was and is retried.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "mx/v1/queue.pb.h"

namespace mx::ingress {

class SuppressionSet {
 public:
  // Case-insensitive.
  bool Contains(std::string_view address) const;
  // Applies a page of the change log (entries in sequence order).
  void Apply(const v1::ListSuppressionsResponse& page);
  uint64_t seq() const;
  size_t size() const;

 private:
  static uint64_t Hash(std::string_view lower_address);
  mutable std::shared_mutex mu_;
  std::unordered_set<uint64_t> hashes_;
  uint64_t seq_ = 0;
};

class SuppressionFollower {
 public:
  // targets: queue node addresses; shards: the cluster's shard count.
  SuppressionFollower(std::vector<std::string> targets, uint32_t shards, std::chrono::milliseconds interval);
  ~SuppressionFollower();
  const SuppressionSet& set() const { return set_; }
  // One round of polling until caught up (tests and the loop); false when shard 0 did not answer.
  bool PollOnce();

 private:
  void Loop();
  SuppressionSet set_;
  struct Router;
  std::unique_ptr<Router> router_;
  std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace mx::ingress
