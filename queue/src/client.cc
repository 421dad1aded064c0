// client.cc — QueueRouter: leader discovery for queue clients.
#include "mx/queue/client.h"

#include <algorithm>

#include "mx/common/grpc_server.h"

namespace mx::queue {

QueueRouter::QueueRouter(std::vector<std::string> seeds, uint32_t shards)
    : addresses_(std::move(seeds)), shards_(std::max<uint32_t>(shards, 1)) {
  for (size_t s = 0; s < shards_.size(); ++s) {
    // Start shards on different seeds so a cold start spreads the probing.
    shards_[s].cursor = addresses_.empty() ? 0 : s % addresses_.size();
    if (!addresses_.empty()) shards_[s].leader = addresses_[shards_[s].cursor];
  }
}

const QueueRouter::Stubs& QueueRouter::StubsFor(const std::string& address) {
  auto& stubs = stubs_[address];
  if (!stubs.queue) {
    auto channel = MakeChannel(address);
    stubs.queue = v1::Queue::NewStub(channel);
    stubs.metadata = v1::Metadata::NewStub(channel);
  }
  return stubs;
}

uint32_t QueueRouter::shards() const {
  std::lock_guard lock(mu_);
  return static_cast<uint32_t>(shards_.size());
}

bool QueueRouter::Accepting(uint32_t shard) const {
  std::lock_guard lock(mu_);
  return shard < shards_.size() && shards_[shard].state == v1::ShardInfo::SHARD_ACTIVE;
}

bool QueueRouter::Serving(uint32_t shard) const {
  std::lock_guard lock(mu_);
  if (shard >= shards_.size()) return false;
  const auto st = shards_[shard].state;
  return st == v1::ShardInfo::SHARD_ACTIVE || st == v1::ShardInfo::SHARD_DRAINING;
}

bool QueueRouter::Retired(uint32_t shard) const {
  std::lock_guard lock(mu_);
  return shard < shards_.size() && shards_[shard].state == v1::ShardInfo::SHARD_RETIRED;
}

bool QueueRouter::ApplyShardMap(const std::vector<v1::ShardInfo>& map) {
  std::lock_guard lock(mu_);
  bool changed = false;
  for (const auto& info : map) {
    if (info.shard() > 255) continue;
    while (shards_.size() <= info.shard()) {
      ShardState st;
      st.state = v1::ShardInfo::SHARD_CREATING;  // until the map says
      st.cursor = addresses_.empty() ? 0 : shards_.size() % addresses_.size();
      if (!addresses_.empty()) st.leader = addresses_[st.cursor];
      shards_.push_back(std::move(st));
      changed = true;
    }
    auto& st = shards_[info.shard()];
    if (st.state != info.state()) {
      st.state = info.state();
      changed = true;
    }
  }
  return changed;
}

QueueRouter::Target QueueRouter::Leader(uint32_t shard) {
  std::lock_guard lock(mu_);
  auto& st = shards_.at(shard);
  const Stubs& stubs = StubsFor(st.leader);
  return Target{stubs.queue.get(), stubs.metadata.get(), st.leader};
}

bool QueueRouter::Observe(uint32_t shard, const std::string& address, const grpc::ClientContext& ctx,
                          const grpc::Status& status) {
  std::lock_guard lock(mu_);
  auto& st = shards_.at(shard);
  const auto code = status.error_code();
  if (code != grpc::StatusCode::UNAVAILABLE && code != grpc::StatusCode::DEADLINE_EXCEEDED) {
    // The replica answered as leader (OK, or an error about the request itself).
    if (st.leader == address) st.failed_at = {};
    return false;
  }
  std::string hint;
  const auto& md = ctx.GetServerTrailingMetadata();
  if (auto it = md.find(kLeaderMetadataKey); it != md.end()) hint.assign(it->second.data(), it->second.size());
  if (st.leader != address) return !st.leader.empty();  // someone already moved on: retry there
  if (!hint.empty() && hint != address) {
    st.leader = hint;
    st.failed_at = {};
    if (std::find(addresses_.begin(), addresses_.end(), hint) == addresses_.end()) addresses_.push_back(hint);
    return true;
  }
  // Unreachable, or a replica that knows no leader (an election is running):
  // try the next address after a pause.
  st.failed_at = std::chrono::steady_clock::now();
  if (!addresses_.empty()) {
    st.cursor = (st.cursor + 1) % addresses_.size();
    st.leader = addresses_[st.cursor];
  }
  return false;
}

bool CertainlyNotApplied(const grpc::ClientContext& ctx, const grpc::Status& status) {
  if (status.ok()) return false;
  if (ctx.GetServerTrailingMetadata().count(kRejectedMetadataKey)) return true;
  // gRPC's words for a call that never got a connection.
  return status.error_code() == grpc::StatusCode::UNAVAILABLE &&
         status.error_message().find("failed to connect") != std::string::npos;
}

bool QueueRouter::Healthy(uint32_t shard) const {
  constexpr auto kAvoidFor = std::chrono::seconds(2);
  std::lock_guard lock(mu_);
  const auto failed_at = shards_.at(shard).failed_at;
  return failed_at == std::chrono::steady_clock::time_point{} ||
         std::chrono::steady_clock::now() - failed_at > kAvoidFor;
}

std::vector<std::string> QueueRouter::Addresses() const {
  std::lock_guard lock(mu_);
  return addresses_;
}

}  // namespace mx::queue
