// shard_mover.cc — drain-shard --move: lock, copy, delete (shard_mover.h).
#include "shard_mover.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "mx/common/log.h"
#include "mx/v1/queue.grpc.pb.h"
#include "probe.h"

namespace mx::queue {

bool ShardMover::Pass(MoveSource& s, std::string* cursor) {
  constexpr size_t kMoveBatch = 256;
  std::vector<std::string> movable;
  std::vector<std::pair<std::string, uint32_t>> locked;
  std::string last;
  s.MoveCandidates(kMoveBatch, *cursor, &movable, &locked, &last);
  *cursor = last;  // "" at the end: the next pass starts over
  std::vector<uint32_t> active;
  for (uint32_t id = 0; id < router_.shards(); ++id) {
    if (id != s.id() && router_.Accepting(id)) active.push_back(id);
  }
  if (active.empty()) {
    if (!movable.empty()) log::Warn("shard " + std::to_string(s.id()) + ": no active shard to move messages to");
    movable.clear();
  }
  // Locked to a shard that retired meanwhile: it holds no copy (it
  // refuses them once retired), so they go to an active shard instead.
  std::vector<std::string> stranded;
  if (!active.empty()) {
    std::erase_if(locked, [&](auto& l) {
      if (!router_.Retired(l.second)) return false;
      stranded.push_back(std::move(l.first));
      return true;
    });
  }
  for (bool retarget : {false, true}) {
    std::map<uint32_t, std::vector<std::string>> to_lock;
    for (auto& qid : retarget ? stranded : movable) {
      to_lock[active[std::hash<std::string>()(qid) % active.size()]].push_back(std::move(qid));
    }
    for (const auto& [target, qids] : to_lock) {
      auto done = s.CommitMove(v1::MoveOp::MOVE_LOCK, qids, target, retarget);
      if (!done.ok()) return false;  // leadership lost, or stopping: the next pass
      for (auto& q : *done) locked.emplace_back(std::move(q), target);
    }
  }
  std::map<uint32_t, std::vector<std::string>> by_target;
  for (auto& [qid, target] : locked) by_target[target].push_back(std::move(qid));
  std::vector<std::string> copied;
  for (const auto& [target, qids] : by_target) CopyTo(s, target, qids, &copied);
  if (copied.empty()) return false;
  auto deleted = s.CommitMove(v1::MoveOp::MOVE_DONE, copied, 0, false);
  if (!deleted.ok()) return false;
  Probe::Get().MessagesMoved(deleted->size());
  return true;
}

// Enqueues each locked message on target (moved: state kept), kWindow at a
// time; *copied gets those the target committed or already had.
void ShardMover::CopyTo(MoveSource& s, uint32_t target, const std::vector<std::string>& qids,
                        std::vector<std::string>* copied) {
  constexpr size_t kWindow = 32;
  if (target >= router_.shards()) return;  // not in this node's map yet: the next pass
  struct Call {
    std::string qid, address;
    grpc::ClientContext ctx;
    v1::EnqueueRequest req;
    v1::EnqueueResponse resp;
    grpc::Status status;
  };
  for (size_t start = 0; start < qids.size(); start += kWindow) {
    std::vector<std::unique_ptr<Call>> calls;
    std::mutex mu;
    std::condition_variable cv;
    size_t pending = 0;
    for (size_t i = start; i < std::min(qids.size(), start + kWindow); ++i) {
      auto m = s.ReadForMove(qids[i]);
      if (!m.ok()) continue;  // gone meanwhile
      auto call = std::make_unique<Call>();
      call->qid = qids[i];
      *call->req.mutable_message() = std::move(m).value();
      call->req.set_shard(target);
      call->req.set_moved(true);
      call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      auto leader = router_.Leader(target);
      call->address = leader.address;
      Call* raw = call.get();
      calls.push_back(std::move(call));
      {
        std::lock_guard lock(mu);
        ++pending;
      }
      leader.stub->async()->Enqueue(&raw->ctx, &raw->req, &raw->resp, [raw, &mu, &cv, &pending](grpc::Status st) {
        std::lock_guard lock(mu);
        raw->status = std::move(st);
        if (--pending == 0) cv.notify_all();
      });
    }
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return pending == 0; });
    }
    for (const auto& c : calls) {
      router_.Observe(target, c->address, c->ctx, c->status);
      if (c->status.ok() || c->status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
        copied->push_back(c->qid);
      } else {
        log::Warn("shard " + std::to_string(s.id()) + ": moving " + c->qid + " to shard " + std::to_string(target) +
                  " failed (tried again): " + c->status.error_message());
      }
    }
  }
}

}  // namespace mx::queue
