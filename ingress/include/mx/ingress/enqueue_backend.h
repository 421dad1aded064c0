// enqueue_backend.h — where ingress sends accepted messages.
//
// The server calls Enqueue() from an Asio thread and must not block; done runs
// on any thread once the queue committed the message (OK), or with the error
// that makes the session answer 451.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mx/common/result.h"
#include "mx/v1/types.pb.h"

namespace mx::ingress {

class EnqueueBackend {
 public:
  using Done = std::function<void(Status)>;
  virtual ~EnqueueBackend() = default;
  virtual void Enqueue(v1::NewMessage message, Done done) = 0;
  // Adds mailstats deltas (msgsrej / msgsdis) for this node; best effort.
  virtual void RecordStats(const v1::MailerStats& delta) = 0;
};

// Enqueues over gRPC to the queue shards at `targets`, picking a shard per
// message by its qid. deadline bounds each call.
std::shared_ptr<EnqueueBackend> MakeGrpcEnqueueBackend(const std::vector<std::string>& targets,
                                                       std::chrono::milliseconds deadline);

}  // namespace mx::ingress
