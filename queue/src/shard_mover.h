// shard_mover.h — drain-shard --move: a draining shard's messages re-enqueued
// on the active shards (the protocol: MoveOp in queue.proto).
//
// The node's mover thread calls Pass() for each draining `--move` shard it
// leads, again and again while a pass makes progress. A pass locks a batch
// (MoveOp LOCK, to a target chosen by queue id among the active shards of
// the router's shard map), copies every locked message to its target
// (Enqueue with `moved`; ALREADY_EXISTS counts as copied) and deletes the
// copied ones (MoveOp DONE). Messages locked to a shard that retired
// meanwhile are locked again to an active one (retarget). Any failure ends
// the pass; what was locked stays locked and the next pass goes on.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mx/common/result.h"
#include "mx/queue/client.h"
#include "mx/v1/queue.pb.h"

namespace mx::queue {

// The draining shard, through its leader replica on this node.
class MoveSource {
 public:
  virtual ~MoveSource() = default;
  virtual uint32_t id() const = 0;
  // Up to max messages after queue id `after`: not yet locked (*movable) and
  // locked with their target (*locked); *last: where to go on ("" at the end).
  virtual void MoveCandidates(size_t max, const std::string& after, std::vector<std::string>* movable,
                              std::vector<std::pair<std::string, uint32_t>>* locked, std::string* last) const = 0;
  // LOCK (to target; retarget: those already locked) or DONE, committed: the
  // queue ids it applied to.
  virtual Result<std::vector<std::string>> CommitMove(v1::MoveOp::Kind kind, const std::vector<std::string>& qids,
                                                      uint32_t target, bool retarget) = 0;
  // A locked message as its target takes it.
  virtual Result<v1::NewMessage> ReadForMove(const std::string& qid) const = 0;
};

class ShardMover {
 public:
  // router: follows the shard map (its active shards are the targets).
  explicit ShardMover(QueueRouter& router) : router_(router) {}

  // One batch from *cursor (updated); whether any message moved.
  bool Pass(MoveSource& source, std::string* cursor);

 private:
  void CopyTo(MoveSource& source, uint32_t target, const std::vector<std::string>& qids,
              std::vector<std::string>* copied);
  QueueRouter& router_;
};

}  // namespace mx::queue
