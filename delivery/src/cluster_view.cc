// cluster_view.cc — host status and site refresh, site triggers, suppressions.
#include "cluster_view.h"

#include <vector>

#include "mx/common/log.h"
#include "probe.h"

namespace mx::delivery {

std::string PrintableCut(std::string_view text, size_t max) {
  std::string out;
  for (char c : text.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : ' ';
  return out;
}

std::optional<v1::SiteStatus> SiteBook::Get(const std::string& site, int64_t now_us) const {
  std::lock_guard lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end() || it->second.until_unix_us() <= now_us) return std::nullopt;
  return it->second;
}

void SiteBook::Set(const v1::SiteStatus& s, int64_t now_us) {
  std::lock_guard lock(mu_);
  sites_[s.site()] = s;
  set_at_[s.site()] = now_us;
}

void SiteBook::Merge(const v1::ListSiteStatusResponse& from_metadata, int64_t refresh_started_us, size_t* suspended,
                     size_t* slowed) {
  std::lock_guard lock(mu_);
  std::unordered_map<std::string, v1::SiteStatus> next;
  for (const auto& st : from_metadata.sites()) next[st.site()] = st;
  std::erase_if(set_at_, [&](const auto& kv) { return kv.second < refresh_started_us; });
  for (const auto& [site, _] : set_at_) {
    if (auto it = sites_.find(site); it != sites_.end()) next.emplace(site, it->second);
  }
  sites_ = std::move(next);
  *suspended = *slowed = 0;
  for (const auto& [_, st] : sites_) ++(st.suspended() ? *suspended : *slowed);
}

void ClusterView::Refresh(bool host_status) {
  const int64_t started = clock_.NowUnixMicros();
  if (host_status) {
    std::vector<v1::HostStatus> all;
    bool complete = true;
    for (uint32_t shard = 0; shard < queue_.shards(); ++shard) {
      if (!queue_.Serving(shard)) continue;  // creating or retired: no hosts of its own
      v1::ListHostStatusResponse resp;
      if (!queue_.ListHostStatus(shard, &resp).ok()) {
        complete = false;  // keep the old view rather than forget a shard's hosts
        break;
      }
      for (auto& h : *resp.mutable_hosts()) all.push_back(std::move(h));
    }
    if (complete) Probe::Get().HostsKnown(hosts_.Merge(all, started));
  }
  RefreshSites(clock_.NowUnixMicros());
}

void ClusterView::RefreshSites(int64_t started_us) {
  v1::ListSiteStatusResponse resp;
  if (!metadata_.ListSiteStatus(&resp).ok()) return;  // keep the old view
  size_t suspended = 0, slowed = 0;
  sites_.Merge(resp, started_us, &suspended, &slowed);
  Probe::Get().SitesHeld(suspended, slowed);
}

void ClusterView::TriggerSite(const SiteShape& shape, const ReplyRule& rule, const std::string& reply,
                              const std::string& qid) {
  const int64_t now = clock_.NowUnixMicros();
  if (auto cur = sites_.Get(shape.site, now); cur && (cur->suspended() || !rule.suspend)) return;
  v1::SiteStatus st;
  st.set_site(shape.site);
  st.set_suspended(rule.suspend);
  st.set_until_unix_us(now + static_cast<int64_t>(rule.duration_s) * 1'000'000);
  st.set_reason(PrintableCut(reply, 300));
  st.set_by("reply rule /" + PrintableCut(rule.match, 80) + "/ on " + worker_id_);
  st.set_max_connections(rule.max_connections);
  st.set_message_rate_count(rule.message_rate.count);
  st.set_message_rate_period_s(rule.message_rate.none() ? 0 : rule.message_rate.period_s);
  st.set_since_unix_us(now);
  sites_.Set(st, now);
  Probe::Get().ReplyRuleFired(shape.named ? shape.site : "other", rule.suspend ? "suspend" : "slow");
  log::Warn("site " + shape.site + (rule.suspend ? " suspended" : " slowed") + " for " +
            std::to_string(rule.duration_s) + "s by a reply rule (" + qid + "): " + st.reason());
  calls_.Begin();
  metadata_.SetSiteStatus(std::move(st), [this, site = shape.site](const grpc::Status& s) {
    if (!s.ok()) log::Warn("storing site " + site + "'s state failed: " + s.error_message());
    calls_.End();
  });
}

void ClusterView::Suppress(v1::SuppressRequest req) {
  if (req.add_size() == 0) return;
  auto sent = std::make_shared<v1::SuppressRequest>(req);
  calls_.Begin();
  metadata_.Suppress(std::move(req), [this, sent](const grpc::Status& s, const v1::SuppressResponse& resp) {
    if (!s.ok()) {
      log::Warn("adding " + sent->add(0).address() + " (and " + std::to_string(sent->add_size() - 1) +
                " more) to the suppression list failed: " + s.error_message());
    } else if (resp.added() > 0) {
      Probe::Get().Suppressed(resp.added());
      for (const auto& a : sent->add()) log::Info("suppression list: " + a.address() + " added (" + a.reason() + ")");
    }
    calls_.End();
  });
}

}  // namespace mx::delivery
