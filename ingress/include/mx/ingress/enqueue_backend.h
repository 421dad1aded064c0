// enqueue_backend.h — where ingress sends accepted messages.
//
// The server calls Enqueue() from an Asio thread and must not block; done runs
// on any thread once the queue committed the message (OK), or with the error
// that makes the session answer 451.
#pragma once

#include <chrono>
#include <cstdint>
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
  // ETRN: makes deferred recipients in `domain` (and its subdomains) ready
  // now on every shard; done gets how many were made ready.
  virtual void RunQueue(const std::string& domain, std::function<void(Result<uint64_t>)> done) = 0;
  // The shard the next message goes to first (one that takes new mail, by
  // the shard map the backend follows); the qid does not choose it.
  virtual uint32_t ShardFor(const std::string& qid) const = 0;
};

// Enqueues over gRPC to the leader of one of `shards` shards (and of the
// shards added later: it follows the shard map), found from the queue node
// addresses in `targets`. The shard is the current run's (ShardSpread: a run
// of messages or a short interval per shard, then the next) among those that
// take new mail (active), skipping shards whose leader last failed. A call that fails because the
// replica is not (or no longer) the leader, or is unreachable, is retried:
// at once when the replica named the new leader, else with backoff; a retry
// that finds the message already committed counts as success. `deadline`
// bounds the whole Enqueue, retries included: then done gets the error and
// the session answers 451 4.3.0 — never 250 without a quorum commit.
std::shared_ptr<EnqueueBackend> MakeGrpcEnqueueBackend(const std::vector<std::string>& targets, uint32_t shards,
                                                       std::chrono::milliseconds deadline);

// For an ingress sharing its process with a queue node (mxd all): a message
// goes straight to that node when it leads the message's shard — `local`
// returns false, without calling its callback, when it does not — else, and
// when leadership moved while the entry was in flight, through `remote`.
// The node runs the same admission checks and commit as its gRPC method.
using LocalEnqueue =
    std::function<bool(uint32_t shard, const v1::NewMessage& message, std::function<void(const Status&)> done)>;
// The shard is the one `remote` would pick first (ShardFor).
std::shared_ptr<EnqueueBackend> MakeLocalFirstEnqueueBackend(LocalEnqueue local,
                                                             std::shared_ptr<EnqueueBackend> remote);

}  // namespace mx::ingress
