// permits.h — cluster-wide delivery limits, kept by shard 0's leader in
// memory: connection slots (SingleThreadDelivery: one per MX host; a site's
// max connections) and rates (a site's messages and new connections per
// period).
//
// A slot is held by a holder (one delivery connection) until it is released
// or its TTL passes without renewal; a worker renews its holds while the
// connections live. Nothing is replicated: a new leader starts empty and for
// one TTL grants no new slot — holders re-register by renewing — so a
// failover never lets a limit be exceeded by connections that are still open.
// Thread-safe.
#pragma once

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "mx/queue/client.h"  // kPermitTtlUs

namespace mx::queue {

class Permits {
 public:
  struct Ask {
    std::string key;
    uint32_t limit = 0;  // 0: unlimited (always granted)
  };

  // Leadership gained at now: no new slots until now + grace_us.
  void BecameLeader(int64_t now_us, int64_t grace_us);

  // Every key's slot for holder, or none. A holder already holding is just
  // renewed. On refusal *retry_after_us says when to ask again.
  bool Acquire(const std::string& holder, const std::vector<Ask>& asks, int64_t ttl_us, int64_t now_us,
               int64_t* retry_after_us);
  // Extends a hold; an unknown holder (after a failover) is taken over as is,
  // even beyond the limit: the connection exists.
  void Renew(const std::string& holder, const std::vector<Ask>& asks, int64_t ttl_us, int64_t now_us);
  void Release(const std::string& holder);

  // One event (a message, a new connection) under a rate of limit per
  // period_s seconds, spaced evenly (period_s / limit apart).
  bool Rate(const std::string& key, uint32_t limit, uint32_t period_s, int64_t now_us, int64_t* retry_after_us);

  // Live holders of key (tests, metrics).
  size_t Holders(const std::string& key, int64_t now_us);

 private:
  struct Hold {
    std::vector<std::string> keys;
    int64_t expiry_us = 0;
  };
  void Drop(const std::string& holder);                                                     // mu_ held
  void Insert(const std::string& holder, const std::vector<Ask>& asks, int64_t expiry_us);  // mu_ held
  void Expire(const std::string& key, int64_t now_us);                                      // mu_ held

  std::mutex mu_;
  std::unordered_map<std::string, Hold> holds_;
  std::unordered_map<std::string, std::set<std::string>> by_key_;
  std::unordered_map<std::string, int64_t> next_send_us_;  // rate: earliest time of the next message
  int64_t grace_until_us_ = 0;
};

}  // namespace mx::queue
