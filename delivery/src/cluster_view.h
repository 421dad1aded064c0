// cluster_view.h — what a delivery worker knows of the whole cluster's
// delivery state: the host status of every shard (PersistentHostStatus,
// skips cluster-wide), the suspended and slowed sites on the metadata shard
// and the triggers this worker adds to them, and the hard bounces it puts on
// the suppression list. Refresh is one pass of the refresher thread (every
// 2 s); a shard that does not answer keeps the old view. Thread-safe.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "host_cache.h"
#include "mx/common/clock.h"
#include "mx/delivery/shaping.h"
#include "queue_link.h"

namespace mx::delivery {

// The cluster's suspended and slowed sites as this worker knows them: the
// metadata shard's list and this worker's own triggers since.
class SiteBook {
 public:
  std::optional<v1::SiteStatus> Get(const std::string& site, int64_t now_us) const;
  void Set(const v1::SiteStatus& s, int64_t now_us);
  // The metadata shard's view replaces this one, but for what this worker
  // set since the refresh began (its SetSiteStatus may not have committed yet).
  void Merge(const v1::ListSiteStatusResponse& from_metadata, int64_t refresh_started_us, size_t* suspended,
             size_t* slowed);

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, v1::SiteStatus> sites_;
  std::unordered_map<std::string, int64_t> set_at_;
};

class ClusterView {
 public:
  // calls counts the asynchronous RPCs in flight (SetSiteStatus, Suppress).
  ClusterView(QueueLink& queue, MetadataLink& metadata, InFlightCalls& calls, const Clock& clock, std::string worker_id)
      : queue_(queue), metadata_(metadata), calls_(calls), clock_(clock), worker_id_(std::move(worker_id)) {}

  // One refresh: every shard's host status (when host status is on), then the sites.
  void Refresh(bool host_status);

  HostCache& hosts() { return hosts_; }
  // The site's state, when suspended or slowed now.
  std::optional<v1::SiteStatus> Site(const std::string& site) const { return sites_.Get(site, clock_.NowUnixMicros()); }
  // A reply rule matched: the site is suspended or slowed here at once and,
  // through the metadata shard, everywhere within seconds. A site already in
  // that state is left as it is (one trigger per episode, not one per reply).
  void TriggerSite(const SiteShape& shape, const ReplyRule& rule, const std::string& reply, const std::string& qid);
  // Hard bounces onto the suppression list (asynchronous; a failure is
  // logged: the next hard bounce of the address adds it).
  void Suppress(v1::SuppressRequest req);

 private:
  void RefreshSites(int64_t started_us);

  QueueLink& queue_;
  MetadataLink& metadata_;
  InFlightCalls& calls_;
  const Clock& clock_;
  const std::string worker_id_;
  HostCache hosts_;
  SiteBook sites_;
};

// Printable ASCII only (a reply quoted in a site's reason or a suppression;
// protobuf strings must be UTF-8), at most max octets.
std::string PrintableCut(std::string_view text, size_t max);

}  // namespace mx::delivery
