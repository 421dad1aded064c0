// raft_membership.cc — RaftLog's configuration changes and leadership moves,
// all with libraft's own calls, on the loop thread.
//
// Adding a replica: raft_add (a spare), raft_assign(STANDBY) (replicated to,
// never counted in a quorum), then, once the standby's log is within a few
// entries of the leader's, raft_assign(VOTER). libraft's promotion gives up
// (RAFT_NOCONNECTION) when a catch-up round takes longer than it allows,
// which a replica fetching a large snapshot under load easily does; catching
// up as a standby first makes the promotion one short round, and a promotion
// libraft gives up on is tried again while the standby keeps making progress.
#include <algorithm>

#include "mx/common/log.h"
#include "raft_log_impl.h"

namespace mx::queue::raft {
namespace {

// A standby this close to the leader's last index is promoted.
constexpr raft_index kCaughtUpGap = 64;
// A standby whose log did not advance for this long is given up on.
constexpr auto kStalledAfter = std::chrono::seconds(30);
// Promotions libraft may give up on before the change fails.
constexpr unsigned kMaxPromotions = 5;

}  // namespace

Status RaftLogImpl::ChangeError(const std::string& what, int rv) {
  Code code = rv == RAFT_NOTLEADER || rv == RAFT_LEADERSHIPLOST ? Code::kUnavailable : Code::kFailedPrecondition;
  return Status(code, tag_ + what + ": " + raft_strerror(rv) + " (" + raft_errmsg(&raft_) + ")");
}

void RaftLogImpl::Change(const std::function<int(raft_change*, raft_change_cb)>& start, std::function<void(int)> then) {
  // The status that membership checks read (transfer-leader's "is it a
  // voter?") is refreshed at once, not at the next poll: a caller told the
  // change is done may act on it straight away.
  auto* op = new ChangeOp{[this, then = std::move(then)](int status) {
    RefreshStatus();
    then(status);
  }};
  op->req.data = op;
  int rv = start(&op->req, [](raft_change* req, int status) {
    auto* op = static_cast<ChangeOp*>(req->data);
    auto then = std::move(op->then);
    delete op;
    then(status);
  });
  if (rv != 0) {
    auto then = std::move(op->then);
    delete op;
    then(rv);
  }
}

void RaftLogImpl::AddVoter(uint64_t id, const std::string& raft_address, ChangeDone done) {
  auto shared = std::make_shared<ChangeDone>(std::move(done));
  if (!RunOnLoop([this, id, raft_address, shared]() mutable {
        ChangeDone done = std::move(*shared);
        if (raft_state(&raft_) != RAFT_LEADER) return done(NotLeader());
        // Idempotent, so that a retried request (the answer to the first was
        // lost in a leader change, or the caller gave up waiting) picks up
        // where the first left off.
        const int role = RoleOf(id);
        if (role == RAFT_VOTER) return done(Status::Ok());
        if (catch_up_) {
          if (catch_up_->id == id) return catch_up_->dones.push_back(std::move(done));
          return done(Status(Code::kFailedPrecondition,
                             tag_ + "node " + std::to_string(catch_up_->id) + " is still catching up"));
        }
        if (role == RAFT_STANDBY) return BeginCatchUp(id, std::move(done));
        auto standby = [this, id, done = std::move(done)](int rv) mutable {
          if (rv != 0) return done(ChangeError("assign role standby", rv));
          BeginCatchUp(id, std::move(done));
        };
        if (role == RAFT_SPARE) {
          return Change(
              [&](raft_change* req, raft_change_cb cb) { return raft_assign(&raft_, req, id, RAFT_STANDBY, cb); },
              std::move(standby));
        }
        Change([&](raft_change* req, raft_change_cb cb) { return raft_add(&raft_, req, id, raft_address.c_str(), cb); },
               [this, id, standby = std::move(standby)](int rv) mutable {
                 if (rv != 0) return standby(rv);
                 Change([&](raft_change* req,
                            raft_change_cb cb) { return raft_assign(&raft_, req, id, RAFT_STANDBY, cb); },
                        std::move(standby));
               });
      })) {
    (*shared)(Status(Code::kUnavailable, tag_ + "shutting down"));
  }
}

void RaftLogImpl::BeginCatchUp(uint64_t id, ChangeDone done) {
  catch_up_ = std::make_unique<CatchUp>();
  catch_up_->id = id;
  catch_up_->dones.push_back(std::move(done));
  catch_up_->progressed = std::chrono::steady_clock::now();
  log::Info(tag_ + "node " + std::to_string(id) + " is a standby; catching it up before it votes");
  CheckCatchUp();
}

void RaftLogImpl::FinishCatchUp(const Status& st) {
  auto c = std::move(catch_up_);
  for (auto& d : c->dones) d(st);
}

void RaftLogImpl::CheckCatchUp() {
  if (!catch_up_ || catch_up_->promoting) return;
  const uint64_t id = catch_up_->id;
  const std::string who = "node " + std::to_string(id);
  if (closing_) return FinishCatchUp(Status(Code::kUnavailable, tag_ + "shutting down"));
  if (raft_state(&raft_) != RAFT_LEADER || !raft_.leader_state.progress) {
    return FinishCatchUp(Status(Code::kUnavailable, tag_ + "lost leadership while " + who +
                                                        " was catching up; ask again (it resumes as a standby)"));
  }
  const unsigned i = IndexOf(id);
  if (i == raft_.configuration.n || raft_.configuration.servers[i].role != RAFT_STANDBY) {
    return FinishCatchUp(Status(Code::kFailedPrecondition, tag_ + who + " left the standby role while catching up"));
  }
  const raft_index match = raft_.leader_state.progress[i].match_index;
  const raft_index last = raft_last_index(&raft_);
  const auto now = std::chrono::steady_clock::now();
  if (match > catch_up_->best_match) {
    catch_up_->best_match = match;
    catch_up_->progressed = now;
  }
  if (match + kCaughtUpGap >= last) {
    catch_up_->promoting = true;
    Change([&](raft_change* req, raft_change_cb cb) { return raft_assign(&raft_, req, id, RAFT_VOTER, cb); },
           [this, who](int rv) {
             if (!catch_up_) return;
             catch_up_->promoting = false;
             if (rv == 0) {
               log::Info(tag_ + who + " caught up and votes");
               return FinishCatchUp(Status::Ok());
             }
             // Rounds too slow for libraft (load, a slow disk): still a standby,
             // still replicated to; promote again once close.
             if (rv == RAFT_NOCONNECTION && ++catch_up_->promotions < kMaxPromotions) {
               log::Warn(tag_ + "promoting " + who + " timed out in libraft; trying again once it is close");
               catch_up_->progressed = std::chrono::steady_clock::now();
               return;
             }
             FinishCatchUp(ChangeError("assign role voter", rv));
           });
    return;
  }
  if (now - catch_up_->progressed > kStalledAfter) {
    FinishCatchUp(Status(Code::kFailedPrecondition,
                         tag_ + who + " stopped catching up at index " + std::to_string(match) + " of " +
                             std::to_string(last) + " (no progress for " + std::to_string(kStalledAfter.count()) +
                             " s); it stays a non-voting standby: fix it and add it again, or remove it"));
  }
}

void RaftLogImpl::RemoveServer(uint64_t id, ChangeDone done) {
  auto shared = std::make_shared<ChangeDone>(std::move(done));
  if (!RunOnLoop([this, id, shared]() mutable {
        ChangeDone done = std::move(*shared);
        if (RoleOf(id) < 0) return done(Status::Ok());  // already removed (a retried request)
        if (auto st = CheckQuorumWithout(id); !st.ok()) return done(st);
        Change([&](raft_change* req, raft_change_cb cb) { return raft_remove(&raft_, req, id, cb); },
               [this, done = std::move(done)](int rv) {
                 done(rv == 0 ? Status::Ok() : ChangeError("remove server", rv));
               });
      })) {
    (*shared)(Status(Code::kUnavailable, tag_ + "shutting down"));
  }
}

void RaftLogImpl::TransferLeadership(uint64_t id, ChangeDone done) {
  auto shared = std::make_shared<ChangeDone>(std::move(done));
  if (!RunOnLoop([this, id, shared]() mutable {
        auto done = std::move(*shared);
        if (raft_state(&raft_) != RAFT_LEADER || !raft_.leader_state.progress) return done(NotLeader());
        if (transfer_in_flight_) {
          return done(Status(Code::kFailedPrecondition, tag_ + "a leadership transfer is already in progress"));
        }
        if (id == options_.node_id) return done(Status::Ok());
        if (RoleOf(id) != RAFT_VOTER) {
          return done(
              Status(Code::kFailedPrecondition, tag_ + "node " + std::to_string(id) + " is not a voter of this shard"));
        }
        auto finished = std::make_shared<ChangeDone>(std::move(done));
        if (int rv = StartTransfer(id, [finished] { (*finished)(Status::Ok()); }); rv != 0) {
          return (*finished)(ChangeError("leadership transfer", rv));
        }
        log::Info(tag_ + "handing leadership to node " + std::to_string(id) + " (operator)");
      })) {
    (*shared)(Status(Code::kUnavailable, tag_ + "shutting down"));
  }
}

bool RaftLogImpl::Answering(uint64_t id, unsigned i) {
  const auto now = std::chrono::steady_clock::now();
  if (raft_.leader_state.progress && raft_.leader_state.progress[i].recent_recv) heard_[id] = now;
  auto it = heard_.find(id);
  return it != heard_.end() && now - it->second < std::chrono::milliseconds(2 * options_.election_timeout_ms);
}

Status RaftLogImpl::CheckQuorumWithout(uint64_t id) {
  if (RoleOf(id) != RAFT_VOTER) return Status::Ok();
  unsigned voters = 0, live = 0;
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    const auto& srv = raft_.configuration.servers[i];
    if (srv.role != RAFT_VOTER || srv.id == id) continue;
    ++voters;
    if (srv.id == options_.node_id || Answering(srv.id, i)) ++live;
  }
  if (voters == 0) return Status(Code::kFailedPrecondition, tag_ + "node " + std::to_string(id) + " is its only voter");
  if (live < voters / 2 + 1) {
    return Status(Code::kFailedPrecondition, tag_ + "removing node " + std::to_string(id) + " would leave " +
                                                 std::to_string(voters) + " voters of which only " +
                                                 std::to_string(live) + " answer the leader, less than a quorum (" +
                                                 std::to_string(voters / 2 + 1) + ")");
  }
  return Status::Ok();
}

int RaftLogImpl::StartTransfer(uint64_t to, std::function<void()> then) {
  struct Op {
    struct raft_transfer req {};
    RaftLogImpl* self;
    std::function<void()> then;
  };
  auto* op = new Op{{}, this, std::move(then)};
  op->req.data = op;
  int rv = raft_transfer(&raft_, &op->req, to, [](struct raft_transfer* req) {
    auto* op = static_cast<Op*>(req->data);
    op->self->transfer_in_flight_ = false;
    if (op->then) op->then();
    delete op;
  });
  if (rv != 0) {
    delete op;
    return rv;
  }
  transfer_in_flight_ = true;
  return 0;
}

unsigned RaftLogImpl::IndexOf(uint64_t id) const {
  for (unsigned i = 0; i < raft_.configuration.n; ++i) {
    if (raft_.configuration.servers[i].id == id) return i;
  }
  return raft_.configuration.n;
}

int RaftLogImpl::RoleOf(uint64_t id) const {
  const unsigned i = IndexOf(id);
  return i == raft_.configuration.n ? -1 : raft_.configuration.servers[i].role;
}

void RaftLogImpl::MaybeHandOver() {
  const uint64_t chosen = sm_.PreferredLeader();
  const uint64_t want = chosen != 0 ? chosen : options_.preferred_leader;
  if (want == 0 || want == options_.node_id || transfer_in_flight_ || !raft_.leader_state.progress) return;
  const unsigned i = IndexOf(want);
  if (i == raft_.configuration.n || raft_.configuration.servers[i].role != RAFT_VOTER ||
      raft_.leader_state.progress[i].match_index < raft_last_index(&raft_)) {
    return;
  }
  if (StartTransfer(want, nullptr) != 0) return;
  log::Info(tag_ + "handing leadership to its preferred replica " + std::to_string(want));
}

}  // namespace mx::queue::raft
