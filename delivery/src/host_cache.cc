// host_cache.cc — a worker's view of the cluster's host status.
#include "host_cache.h"

namespace mx::delivery {

std::optional<std::string> HostCache::SkipReason(const std::string& host, int64_t now_us, int64_t timeout_us) const {
  if (timeout_us <= 0) return std::nullopt;
  std::lock_guard lock(mu_);
  auto it = hosts_.find(host);
  if (it == hosts_.end() || it->second.consecutive_failures() == 0) return std::nullopt;
  if (now_us - it->second.last_attempt_unix_us() >= timeout_us) return std::nullopt;
  return it->second.last_reply();
}

bool HostCache::ShouldReport(const std::string& host, bool ok, int64_t now_us) const {
  if (!ok) return true;
  std::lock_guard lock(mu_);
  auto it = hosts_.find(host);
  return it == hosts_.end() || it->second.consecutive_failures() > 0 ||
         now_us - it->second.last_attempt_unix_us() > 60'000'000;
}

void HostCache::Record(const std::string& host, bool ok, const std::string& reply, int64_t now_us) {
  std::lock_guard lock(mu_);
  auto& h = hosts_[host];
  h.set_host(host);
  h.set_last_attempt_unix_us(now_us);
  h.set_last_reply(reply);
  h.set_consecutive_failures(ok ? 0 : h.consecutive_failures() + 1);
}

size_t HostCache::Merge(const std::vector<v1::HostStatus>& from_shards, int64_t refresh_started_us) {
  std::unordered_map<std::string, v1::HostStatus> merged;
  for (const auto& h : from_shards) {
    auto [it, fresh] = merged.emplace(h.host(), h);
    if (!fresh && h.last_attempt_unix_us() > it->second.last_attempt_unix_us()) it->second = h;
  }
  std::lock_guard lock(mu_);
  for (auto& [host, local] : hosts_) {  // our own attempts since the refresh began are newer
    if (local.last_attempt_unix_us() < refresh_started_us) continue;
    auto it = merged.find(host);
    if (it == merged.end() || it->second.last_attempt_unix_us() < local.last_attempt_unix_us()) merged[host] = local;
  }
  hosts_ = std::move(merged);
  return hosts_.size();
}

}  // namespace mx::delivery
