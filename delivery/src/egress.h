// egress.h — egress sources and pools (delivery.sources, delivery.pools): the
// source a message leaves from is picked by weight in its pool, the first
// pool naming the sender's domain, else "default" (every source, weight 1,
// unless configured). Immutable after construction; Pick is thread-safe.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "mx/common/config.h"
#include "mx/delivery/shaping.h"

namespace mx::delivery {

struct EgressPick {
  std::string name, address, ehlo;
  RateLimit rate;  // the source's own warm-up rate, cluster-wide
};

class EgressSources {
 public:
  explicit EgressSources(const DeliveryConfig& config);  // validated by ParseConfig

  // Null without delivery.sources.
  const EgressPick* Pick(const std::string& sender) const;

 private:
  struct Pool {
    std::string name;
    std::vector<std::pair<size_t, uint32_t>> picks;  // index into sources_, weight
    uint64_t total = 0;
    std::vector<std::string> senders;
  };
  std::vector<EgressPick> sources_;
  std::vector<Pool> pools_;  // "default" last
};

}  // namespace mx::delivery
