// apply_meta.cc — the metadata shard's records (meta column family): queue
// replicas (members), the node table (heartbeats, drain), the pushed policy,
// site status (suspended / slowed), the suppression list and its change log,
// the shard map.
#include <algorithm>

#include "apply.h"

namespace mx::queue {

Status StateMachine::Applier::Member(const v1::MemberOp& op) {
  const std::string key = kMemberPrefix + EncodeU64(op.node_id());
  if (op.removed()) {
    b_.Delete(sm_.meta_, key);
  } else {
    b_.Put(sm_.meta_, key, op.grpc_address());
  }
  ctx_.member_ops.emplace_back(op.node_id(), op.removed() ? "" : op.grpc_address());
  return Status::Ok();
}

Status StateMachine::Applier::Leader(const v1::LeaderOp& op) {
  if (op.preferred() == 0) {
    b_.Delete(sm_.meta_, kPreferredLeaderKey);
  } else {
    b_.Put(sm_.meta_, kPreferredLeaderKey, EncodeU64(op.preferred()));
  }
  ctx_.preferred_leader = op.preferred();
  return Status::Ok();
}

Status StateMachine::Applier::Node(const v1::NodeOp& op, int64_t now, ApplyResult* res) {
  const std::string key = kNodePrefix + op.info().name();
  v1::NodeInfo cur;
  bool found = false;
  if (auto st = b_.GetProto(sm_.meta_, key, &cur, &found); !st.ok()) return st;
  switch (op.kind()) {
    case v1::NodeOp::NODE_HEARTBEAT: {
      const bool drain = found && cur.drain();  // a drain outlives the node's restarts
      cur = op.info();
      cur.set_drain(drain);
      cur.set_last_seen_unix_us(now);
      b_.PutProto(sm_.meta_, key, cur);
      break;
    }
    case v1::NodeOp::NODE_DRAIN:
    case v1::NodeOp::NODE_UNDRAIN:
      if (!found) {
        res->status = Status(Code::kNotFound, "no node '" + op.info().name() + "' (mxctl cluster status lists them)");
        break;
      }
      cur.set_drain(op.kind() == v1::NodeOp::NODE_DRAIN);
      b_.PutProto(sm_.meta_, key, cur);
      break;
    case v1::NodeOp::NODE_FORGET:
      if (!found) res->status = Status(Code::kNotFound, "no node '" + op.info().name() + "'");
      b_.Delete(sm_.meta_, key);
      break;
    default: res->status = Status(Code::kInvalidArgument, "unknown node op"); break;
  }
  return Status::Ok();
}

Status StateMachine::Applier::Policy(const v1::PolicyBundle& policy, int64_t now) {
  v1::PolicyBundle bundle = policy;
  bundle.set_applied_unix_us(now);
  b_.PutProto(sm_.meta_, kPolicyKey, bundle);
  ctx_.policy_version = bundle.version();
  return Status::Ok();
}

Status StateMachine::Applier::Site(const v1::SiteOp& op, int64_t now, ApplyResult* res) {
  if (op.status().site().empty()) {
    res->status = Status(Code::kInvalidArgument, "a site status needs a site");
    return Status::Ok();
  }
  const std::string key = kSitePrefix + op.status().site();
  if (op.clear()) {
    b_.Delete(sm_.meta_, key);
  } else {
    v1::SiteStatus status = op.status();
    status.set_since_unix_us(now);
    b_.PutProto(sm_.meta_, key, status);
  }
  return Status::Ok();
}

// Every change gets the next sequence number; an address keeps only its
// latest change in the log, so followers read each address once.
Status StateMachine::Applier::Suppress(const v1::SuppressOp& op, int64_t now, ApplyResult* res) {
  std::string v;
  bool found = false;
  if (auto st = b_.Get(sm_.meta_, kSuppLastKey, &v, &found); !st.ok()) return st;
  uint64_t seq = found ? DecodeU64(v) : 0;
  if (auto st = b_.Get(sm_.meta_, kSuppTotalKey, &v, &found); !st.ok()) return st;
  int64_t total = found ? static_cast<int64_t>(DecodeU64(v)) : 0;
  auto change = [&](v1::Suppression entry) -> Status {
    const std::string key = kSuppPrefix + entry.address();
    v1::Suppression old;
    bool had = false;
    if (auto gs = b_.GetProto(sm_.meta_, key, &old, &had); !gs.ok()) return gs;
    const bool was_on = had && !old.removed();
    if (entry.removed()) {
      if (!was_on) return Status::Ok();  // nothing to remove
      --total;
      ++res->unsuppressed;
    } else {
      if (was_on) return Status::Ok();  // already on the list: keep its first reason
      ++total;
      ++res->suppressed;
    }
    if (had) b_.Delete(sm_.meta_, kSuppSeqPrefix + EncodeU64(old.seq()));
    entry.set_seq(++seq);
    entry.set_added_unix_us(now);
    b_.PutProto(sm_.meta_, key, entry);
    b_.PutProto(sm_.meta_, kSuppSeqPrefix + EncodeU64(seq), entry);
    return Status::Ok();
  };
  for (const auto& a : op.add()) {
    if (a.address().empty()) continue;
    v1::Suppression e = a;
    e.set_removed(false);
    if (auto st = change(std::move(e)); !st.ok()) return st;
  }
  for (const auto& addr : op.remove()) {
    if (addr.empty()) continue;
    v1::Suppression e;
    e.set_address(addr);
    e.set_removed(true);
    if (auto st = change(std::move(e)); !st.ok()) return st;
  }
  b_.Put(sm_.meta_, kSuppLastKey, EncodeU64(seq));
  b_.Put(sm_.meta_, kSuppTotalKey, EncodeU64(static_cast<uint64_t>(std::max<int64_t>(0, total))));
  return Status::Ok();
}

// A shard's state only moves forward: CREATING, ACTIVE, DRAINING, RETIRED.
Status StateMachine::Applier::ShardMap(const v1::ShardOp& op, int64_t now, ApplyResult* res) {
  const v1::ShardInfo& in = op.info();
  if (in.state() == v1::ShardInfo::SHARD_STATE_UNSPECIFIED || in.replicas().empty()) {
    res->status = Status(Code::kInvalidArgument, "a shard map entry needs a state and replicas");
    return Status::Ok();
  }
  const std::string key = kShardPrefix + EncodeU64(in.shard());
  v1::ShardInfo cur;
  bool found = false;
  if (auto st = b_.GetProto(sm_.meta_, key, &cur, &found); !st.ok()) return st;
  if (op.create() && found) {
    res->status = Status(Code::kAlreadyExists, "shard " + std::to_string(in.shard()) + " is already in the map");
    return Status::Ok();
  }
  if (found && in.state() < cur.state()) {
    res->status = Status(Code::kFailedPrecondition, "shard " + std::to_string(in.shard()) + " is " +
                                                        v1::ShardInfo::State_Name(cur.state()) + ", past " +
                                                        v1::ShardInfo::State_Name(in.state()));
    return Status::Ok();
  }
  v1::ShardInfo next = in;
  next.set_created_unix_us(found ? cur.created_unix_us() : now);
  next.set_changed_unix_us(now);
  b_.PutProto(sm_.meta_, key, next);
  return Status::Ok();
}

}  // namespace mx::queue
