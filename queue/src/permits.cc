// permits.cc — connection slots and message rates held by the leader.
#include "permits.h"

#include <algorithm>

namespace mx::queue {

void Permits::BecameLeader(int64_t now_us, int64_t grace_us) {
  std::lock_guard lock(mu_);
  holds_.clear();
  by_key_.clear();
  next_send_us_.clear();
  grace_until_us_ = now_us + grace_us;
}

void Permits::Drop(const std::string& holder) {
  auto it = holds_.find(holder);
  if (it == holds_.end()) return;
  for (const auto& k : it->second.keys) {
    auto bk = by_key_.find(k);
    if (bk == by_key_.end()) continue;
    bk->second.erase(holder);
    if (bk->second.empty()) by_key_.erase(bk);
  }
  holds_.erase(it);
}

void Permits::Insert(const std::string& holder, const std::vector<Ask>& asks, int64_t expiry_us) {
  Hold& h = holds_[holder];
  h.expiry_us = expiry_us;
  for (const auto& a : asks) {
    if (a.limit == 0) continue;  // an unlimited key takes no slot
    h.keys.push_back(a.key);
    by_key_[a.key].insert(holder);
  }
}

void Permits::Expire(const std::string& key, int64_t now_us) {
  auto bk = by_key_.find(key);
  if (bk == by_key_.end()) return;
  std::vector<std::string> dead;
  for (const auto& h : bk->second) {
    if (holds_[h].expiry_us <= now_us) dead.push_back(h);
  }
  for (const auto& h : dead) Drop(h);
}

bool Permits::Acquire(const std::string& holder, const std::vector<Ask>& asks, int64_t ttl_us, int64_t now_us,
                      int64_t* retry_after_us) {
  std::lock_guard lock(mu_);
  if (auto it = holds_.find(holder); it != holds_.end()) {
    it->second.expiry_us = now_us + ttl_us;
    return true;
  }
  if (now_us < grace_until_us_) {
    *retry_after_us = grace_until_us_ - now_us;
    return false;
  }
  for (const auto& a : asks) {
    if (a.limit == 0) continue;
    Expire(a.key, now_us);
    auto bk = by_key_.find(a.key);
    if (bk != by_key_.end() && bk->second.size() >= a.limit) {
      // The soonest a slot can free up without a release: the first expiry.
      int64_t first = now_us + ttl_us;
      for (const auto& h : bk->second) first = std::min(first, holds_[h].expiry_us);
      *retry_after_us = std::max<int64_t>(first - now_us, 1000);
      return false;
    }
  }
  Insert(holder, asks, now_us + ttl_us);
  return true;
}

void Permits::Renew(const std::string& holder, const std::vector<Ask>& asks, int64_t ttl_us, int64_t now_us) {
  std::lock_guard lock(mu_);
  auto it = holds_.find(holder);
  if (it != holds_.end()) {
    it->second.expiry_us = now_us + ttl_us;
    return;
  }
  Insert(holder, asks, now_us + ttl_us);
}

void Permits::Release(const std::string& holder) {
  std::lock_guard lock(mu_);
  Drop(holder);
}

bool Permits::Rate(const std::string& key, uint32_t limit, uint32_t period_s, int64_t now_us, int64_t* retry_after_us) {
  if (limit == 0) return true;
  const int64_t spacing = static_cast<int64_t>(period_s) * 1'000'000 / limit;
  std::lock_guard lock(mu_);
  if (now_us < grace_until_us_) {  // the previous leader's schedule is unknown
    *retry_after_us = grace_until_us_ - now_us;
    return false;
  }
  if (next_send_us_.size() > 100'000) {  // forget keys whose next turn has come
    std::erase_if(next_send_us_, [&](const auto& kv) { return kv.second < now_us; });
  }
  int64_t& next = next_send_us_[key];
  if (now_us < next) {
    *retry_after_us = next - now_us;
    return false;
  }
  next = now_us + spacing;
  return true;
}

size_t Permits::Holders(const std::string& key, int64_t now_us) {
  std::lock_guard lock(mu_);
  Expire(key, now_us);
  auto bk = by_key_.find(key);
  return bk == by_key_.end() ? 0 : bk->second.size();
}

}  // namespace mx::queue
