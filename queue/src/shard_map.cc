// shard_map.cc — ShardMapFollower: the shard map from the metadata shard,
// applied to a QueueRouter.
#include "mx/queue/shard_map.h"

#include "mx/common/log.h"
#include "mx/common/thread_name.h"

namespace mx::queue {

ShardMapFollower::ShardMapFollower(QueueRouter& router, std::chrono::milliseconds interval, OnChange on_change,
                                   OnChange on_poll)
    : router_(router),
      metadata_(router),
      interval_(interval),
      on_change_(std::move(on_change)),
      on_poll_(std::move(on_poll)) {
  thread_ = std::thread([this] {
    SetThreadName("mx-shardmap");
    Loop();
  });
}

ShardMapFollower::~ShardMapFollower() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool ShardMapFollower::PollOnce() {
  v1::GetShardMapResponse resp;
  MetadataClient::Deadline d;
  d.per_call = std::chrono::milliseconds(3000);
  if (!metadata_.Call(&v1::Metadata::Stub::GetShardMap, v1::GetShardMapRequest(), &resp, d).ok()) return false;
  std::vector<v1::ShardInfo> map(resp.shards().begin(), resp.shards().end());
  if (router_.ApplyShardMap(map)) {
    std::string desc;
    for (const auto& s : map) {
      desc += (desc.empty() ? "" : ", ") + std::to_string(s.shard()) + " " +
              v1::ShardInfo::State_Name(s.state()).substr(sizeof("SHARD_") - 1);
    }
    log::Info("shard map: " + desc);
    if (on_change_) on_change_(map);
  }
  if (on_poll_) on_poll_(map);
  return true;
}

void ShardMapFollower::Loop() {
  for (;;) {
    PollOnce();
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, interval_, [this] { return stopped_; })) return;
  }
}

}  // namespace mx::queue
