// suppressions.cc — the suppression set and its follower thread.
#include "suppressions.h"

#include <grpcpp/grpcpp.h>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/thread_name.h"
#include "mx/queue/client.h"
#include "mx/queue/metadata_client.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::ingress {

uint64_t SuppressionSet::Hash(std::string_view a) {
  // FNV-1a, 64 bits: stable, and collisions (a wrong refusal) are
  // vanishingly rare at millions of addresses (~n²/2^65).
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : a) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

bool SuppressionSet::Contains(std::string_view address) const {
  const uint64_t h = Hash(ToLower(address));
  std::shared_lock lock(mu_);
  return hashes_.count(h) > 0;
}

void SuppressionSet::Apply(const v1::ListSuppressionsResponse& page) {
  std::unique_lock lock(mu_);
  for (const auto& e : page.entries()) {
    const uint64_t h = Hash(ToLower(e.address()));
    if (e.removed()) {
      hashes_.erase(h);
    } else {
      hashes_.insert(h);
    }
    if (e.seq() > seq_) seq_ = e.seq();
  }
}

uint64_t SuppressionSet::seq() const {
  std::shared_lock lock(mu_);
  return seq_;
}

size_t SuppressionSet::size() const {
  std::shared_lock lock(mu_);
  return hashes_.size();
}

struct SuppressionFollower::Router {
  Router(std::vector<std::string> targets, uint32_t shards) : router(std::move(targets), shards) {}
  queue::QueueRouter router;
};

SuppressionFollower::SuppressionFollower(std::vector<std::string> targets, uint32_t shards,
                                         std::chrono::milliseconds interval)
    : router_(std::make_unique<Router>(std::move(targets), shards)), interval_(interval) {
  thread_ = std::thread([this] {
    SetThreadName("mx-suppress");
    Loop();
  });
}

SuppressionFollower::~SuppressionFollower() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool SuppressionFollower::PollOnce() {
  for (int page = 0; page < 1000; ++page) {  // 10 million changes at most per round
    v1::ListSuppressionsRequest req;
    req.set_after_seq(set_.seq());
    req.set_limit(10000);
    v1::ListSuppressionsResponse resp;
    queue::MetadataClient metadata(router_->router);
    auto st = metadata.Call(&v1::Metadata::Stub::ListSuppressions, req, &resp, {std::chrono::seconds(5), {}});
    if (!st.ok()) return false;
    set_.Apply(resp);
    if (resp.entries_size() < 10000) return true;
  }
  return true;
}

void SuppressionFollower::Loop() {
  bool warned = false;
  std::unique_lock lock(mu_);
  while (!stopped_) {
    lock.unlock();
    const bool ok = PollOnce();
    if (!ok && !warned) log::Warn("suppression list: shard 0 does not answer; checking the list as last seen");
    if (ok && warned)
      log::Info("suppression list: following shard 0 again (" + std::to_string(set_.size()) + " addresses)");
    warned = !ok;
    lock.lock();
    cv_.wait_for(lock, interval_, [this] { return stopped_; });
  }
}

}  // namespace mx::ingress
