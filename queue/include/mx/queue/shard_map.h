// shard_map.h — how ingress, delivery and control follow the shard map.
//
// ShardMapFollower asks the metadata shard for the map every `interval` and
// applies it to a QueueRouter: shards added online appear (ingress places
// mail on them once active; delivery pulls from them; control's fan-out
// asks them), draining shards stop taking new mail, retired ones are left
// alone. on_change runs on the follower's thread after each change, on_poll
// after every poll that got the map (changed or not). A failed poll keeps
// the router as it was and is tried again.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "mx/queue/client.h"
#include "mx/queue/metadata_client.h"

namespace mx::queue {

class ShardMapFollower {
 public:
  using OnChange = std::function<void(const std::vector<v1::ShardInfo>& map)>;
  // The router must outlive the follower.
  ShardMapFollower(QueueRouter& router, std::chrono::milliseconds interval, OnChange on_change = nullptr,
                   OnChange on_poll = nullptr);
  ~ShardMapFollower();
  ShardMapFollower(const ShardMapFollower&) = delete;
  ShardMapFollower& operator=(const ShardMapFollower&) = delete;

  // One poll (the loop's step; tests): false when the metadata shard did not answer.
  bool PollOnce();

 private:
  void Loop();
  QueueRouter& router_;
  MetadataClient metadata_;
  const std::chrono::milliseconds interval_;
  const OnChange on_change_;
  const OnChange on_poll_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  std::thread thread_;
};

}  // namespace mx::queue
