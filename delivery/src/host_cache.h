// host_cache.h — the cluster's host status (PersistentHostStatus) as one
// delivery worker knows it: refreshed from every queue shard every couple of
// seconds, updated at once by the worker's own attempts.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "mx/v1/types.pb.h"

namespace mx::delivery {

class HostCache {
 public:
  // The reply to report when host must be skipped: its last attempt failed
  // less than timeout_us ago (timeout_us <= 0: never skip).
  std::optional<std::string> SkipReason(const std::string& host, int64_t now_us, int64_t timeout_us) const;
  // Successes are reported to the queue only when they change something (the
  // host had failed, is unknown, or was last reported a minute ago), so a
  // busy host does not cost a replicated write per message.
  bool ShouldReport(const std::string& host, bool ok, int64_t now_us) const;
  void Record(const std::string& host, bool ok, const std::string& reply, int64_t now_us);
  // Replaces the view with the shards' (newest entry per host wins; hosts no
  // shard knows any more were purged), keeping this worker's own attempts
  // made since the refresh began. Returns the number of hosts known.
  size_t Merge(const std::vector<v1::HostStatus>& from_shards, int64_t refresh_started_us);

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, v1::HostStatus> hosts_;
};

}  // namespace mx::delivery
