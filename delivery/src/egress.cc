// egress.cc — pools of weighted egress sources and the pick per message.
#include "egress.h"

#include <algorithm>
#include <random>

#include "mx/common/address.h"

namespace mx::delivery {

EgressSources::EgressSources(const DeliveryConfig& config) {
  for (const auto& src : config.sources) {
    auto rate = ParseRate(src.max_message_rate.empty() ? "none" : src.max_message_rate);
    sources_.push_back(EgressPick{src.name, src.address, src.ehlo, rate.ok() ? *rate : RateLimit{0, 60}});
  }
  if (sources_.empty()) return;
  auto index_of = [&](const std::string& n) {
    for (size_t i = 0; i < sources_.size(); ++i) {
      if (sources_[i].name == n) return i;
    }
    return size_t{0};  // validated by ParseConfig
  };
  bool has_default = false;
  for (const auto& p : config.pools) {
    Pool pool;
    pool.name = p.name;
    for (const auto& d : p.senders) pool.senders.push_back(ToLower(d));
    for (const auto& [n, w] : p.sources) {
      pool.picks.emplace_back(index_of(n), w);
      pool.total += w;
    }
    has_default = has_default || p.name == "default";
    pools_.push_back(std::move(pool));
  }
  if (!has_default) {
    Pool all;
    all.name = "default";
    for (size_t i = 0; i < sources_.size(); ++i) {
      all.picks.emplace_back(i, 1);
      ++all.total;
    }
    pools_.push_back(std::move(all));
  }
  std::stable_partition(pools_.begin(), pools_.end(), [](const auto& p) { return p.name != "default"; });
}

const EgressPick* EgressSources::Pick(const std::string& sender) const {
  if (pools_.empty()) return nullptr;
  const std::string domain = DomainOf(sender);
  const Pool* pool = &pools_.back();
  for (const auto& p : pools_) {
    const bool match = !domain.empty() && std::any_of(p.senders.begin(), p.senders.end(),
                                                      [&](const std::string& d) { return InDomain(domain, d); });
    if (match) {
      pool = &p;
      break;
    }
  }
  thread_local std::minstd_rand rng(std::random_device{}());
  uint64_t n = std::uniform_int_distribution<uint64_t>(0, pool->total - 1)(rng);
  for (const auto& [i, w] : pool->picks) {
    if (n < w) return &sources_[i];
    n -= w;
  }
  return &sources_[pool->picks.back().first];
}

}  // namespace mx::delivery
