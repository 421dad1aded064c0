// membership.cc — online membership changes of one shard's Raft group.
#include "membership.h"

#include <algorithm>
#include <future>
#include <memory>
#include <thread>

#include "mx/common/config.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::queue {
namespace {

grpc::Status ToGrpc(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

}  // namespace

// One membership change or leadership transfer of this shard at a time.
class Membership::ChangeGuard {
 public:
  ChangeGuard(Membership& owner, std::string what) : owner_(owner) {
    std::lock_guard lock(owner_.change_mu_);
    if (!owner_.change_in_flight_.empty()) {
      busy_ = owner_.change_in_flight_;
      return;
    }
    owner_.change_in_flight_ = std::move(what);
  }
  ~ChangeGuard() {
    if (!busy_.empty()) return;
    std::lock_guard lock(owner_.change_mu_);
    owner_.change_in_flight_.clear();
  }
  ChangeGuard(const ChangeGuard&) = delete;
  ChangeGuard& operator=(const ChangeGuard&) = delete;
  bool ok() const { return busy_.empty(); }
  grpc::Status Refusal() const {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        owner_.replica_.tag() + ": another change is in progress (" + busy_ + "); try again when it is done");
  }

 private:
  Membership& owner_;
  std::string busy_;
};

// A replica to be added must answer as node_id and host this shard.
grpc::Status Membership::ProbeReplica(uint64_t node_id, const std::string& address) const {
  auto stub = v1::Queue::NewStub(MakeChannel(address));
  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  v1::GetReplicaStatusResponse status;
  auto st = stub->GetReplicaStatus(&c, v1::GetReplicaStatusRequest(), &status);
  const std::string who = "node " + std::to_string(node_id) + " at " + address;
  if (!st.ok()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, replica_.tag() + ": " + who + " is unreachable (" +
                                                                   st.error_message() +
                                                                   "); start it (queue.join: true) before adding it");
  }
  if (status.node_id() != node_id) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, replica_.tag() + ": " + address + " is node " +
                                                                   std::to_string(status.node_id()) + ", not " +
                                                                   std::to_string(node_id));
  }
  for (const auto& r : status.replicas()) {
    if (r.shard() != shard_) continue;
    if (r.role() == "removed") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          replica_.tag() + ": " + who +
                              " was removed from this shard and keeps its old state: wipe its shard directory "
                              "(or give it a new node id) before adding it again");
    }
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, replica_.tag() + ": " + who + " does not host this shard");
}

template <typename Fn>
Status Membership::WaitChange(Fn start, std::chrono::seconds limit) {
  auto p = std::make_shared<std::promise<mx::Status>>();
  auto f = p->get_future();
  start([p](const mx::Status& st) { p->set_value(st); });
  if (f.wait_for(limit) != std::future_status::ready) {
    return mx::Status(Code::kDeadlineExceeded,
                      replica_.tag() + ": the change did not finish within " + std::to_string(limit.count()) + " s");
  }
  return f.get();
}

// Membership: record the gRPC address (replicated), then change Raft's configuration.
grpc::Status Membership::AddReplica(grpc::ServerContext* ctx, const v1::AddReplicaRequest* req) {
  if (req->node_id() == 0 || req->grpc_address().empty() || req->raft_address().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "node_id, grpc_address and raft_address are required");
  }
  if (!ParseHostPort(req->grpc_address()).ok() || !ParseHostPort(req->raft_address()).ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "addresses must be host:port");
  }
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  ChangeGuard change(*this, "adding node " + std::to_string(req->node_id()));
  if (!change.ok()) return change.Refusal();
  // A voter that never answers would count against the quorum at once.
  if (auto st = ProbeReplica(req->node_id(), req->grpc_address()); !st.ok()) return st;
  v1::QueueCommand cmd;
  cmd.set_now_unix_us(clock_.NowUnixMicros());
  cmd.mutable_member()->set_node_id(req->node_id());
  cmd.mutable_member()->set_grpc_address(req->grpc_address());
  if (auto r = replica_.CommitAndWait(std::move(cmd)); !r.status.ok()) return replica_.CommitError(ctx, r.status);
  mx::Status st =
      WaitChange([&](RaftLog::ChangeDone d) { log_.AddVoter(req->node_id(), req->raft_address(), std::move(d)); });
  if (!st.ok()) return ToGrpc(st);
  log::Info(replica_.tag() + ": added node " + std::to_string(req->node_id()) + " (" + req->raft_address() +
            ") as a voter");
  return grpc::Status::OK;
}

grpc::Status Membership::RemoveReplica(grpc::ServerContext* ctx, const v1::RemoveReplicaRequest* req) {
  if (req->node_id() == 0) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "node_id is required");
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  ChangeGuard change(*this, "removing node " + std::to_string(req->node_id()));
  if (!change.ok()) return change.Refusal();
  const std::string removed_at = address_of_(req->node_id());
  mx::Status st = WaitChange([&](RaftLog::ChangeDone d) { log_.RemoveServer(req->node_id(), std::move(d)); });
  if (!st.ok()) return ToGrpc(st);
  log::Info(replica_.tag() + ": removed node " + std::to_string(req->node_id()));
  // Raft never tells a removed replica; without this it would campaign on
  // its old configuration and answer clients with a stale view.
  if (!removed_at.empty()) {
    auto stub = v1::Queue::NewStub(MakeChannel(removed_at));
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    v1::RetireReplicaRequest retire;
    retire.set_shard(shard_);
    retire.set_node_id(req->node_id());
    v1::RetireReplicaResponse ignored;
    if (auto rs = stub->RetireReplica(&c, retire, &ignored); !rs.ok()) {
      log::Warn(replica_.tag() + ": could not tell node " + std::to_string(req->node_id()) + " at " + removed_at +
                " it was removed (" + rs.error_message() + "); it answers with a stale view until wiped");
    }
  }
  if (replica_.IsLeader()) {
    v1::QueueCommand cmd;
    cmd.set_now_unix_us(clock_.NowUnixMicros());
    cmd.mutable_member()->set_node_id(req->node_id());
    cmd.mutable_member()->set_removed(true);
    replica_.CommitAndWait(std::move(cmd));  // best effort: the address entry is only a hint
  }
  return grpc::Status::OK;
}

// Leadership to node_id (or the most caught-up other voter), which becomes
// the shard's replicated preferred leader first, so balancing keeps it.
grpc::Status Membership::TransferLeader(grpc::ServerContext* ctx, const v1::TransferLeaderRequest* req,
                                        v1::TransferLeaderResponse* resp) {
  auto answer = [&](uint64_t leader) {
    resp->set_leader_id(leader);
    resp->set_leader_address(address_of_(leader));
    return grpc::Status::OK;
  };
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  ChangeGuard change(*this, "a leadership transfer");
  if (!change.ok()) return change.Refusal();
  const auto status = log_.GetStatus();
  uint64_t target = req->node_id();
  if (target == 0) {
    uint64_t best_match = 0;
    for (const auto& m : status.members()) {
      if (m.role() != "voter" || m.id() == self_) continue;
      if (target == 0 || m.match_index() > best_match) {
        target = m.id();
        best_match = m.match_index();
      }
    }
    if (target == 0) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          replica_.tag() + ": no other voter to hand leadership to");
    }
  } else {
    const auto m =
        std::find_if(status.members().begin(), status.members().end(), [&](const auto& m) { return m.id() == target; });
    if (m == status.members().end() || m->role() != "voter") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          replica_.tag() + ": node " + std::to_string(target) + " is not a voter of this shard");
    }
  }
  v1::QueueCommand cmd;
  cmd.set_now_unix_us(clock_.NowUnixMicros());
  cmd.mutable_leader()->set_preferred(target);
  if (auto r = replica_.CommitAndWait(std::move(cmd)); !r.status.ok()) return replica_.CommitError(ctx, r.status);
  if (target == self_) return answer(self_);  // already leads: the preference is recorded
  mx::Status st = WaitChange([&](RaftLog::ChangeDone d) { log_.TransferLeadership(target, std::move(d)); },
                             std::chrono::seconds(30));
  if (!st.ok()) return ToGrpc(st);
  // libraft is done; the new leader may still be winning its election.
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(4 * election_timeout_.count());
  while (log_.LeaderId() != target && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (log_.LeaderId() != target) {
    return grpc::Status(grpc::StatusCode::ABORTED,
                        replica_.tag() + ": node " + std::to_string(target) +
                            " did not take over (it stays the preferred leader; balancing tries again)");
  }
  log::Info(replica_.tag() + ": leadership handed to node " + std::to_string(target));
  return answer(target);
}

}  // namespace mx::queue
