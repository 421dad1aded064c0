// metadata_shards.cc — the shard map's RPCs on the metadata shard: read the
// map, add a shard (recorded CREATING; its replicas open the group; its first
// leader makes it ACTIVE), move a shard's state forward.
#include <algorithm>
#include <thread>

#include "metadata_service.h"
#include "mx/common/log.h"

namespace mx::queue {
namespace {

// Shard s's Raft transport listens on the node's Raft port + s.
constexpr uint32_t kMaxShardId = 255;

grpc::Status Verdict(const Status& st) {
  switch (st.code()) {
    case Code::kAlreadyExists: return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, st.message());
    case Code::kFailedPrecondition: return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, st.message());
    case Code::kInvalidArgument: return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, st.message());
    default: return grpc::Status(grpc::StatusCode::UNAVAILABLE, st.message());
  }
}

bool IsVerdict(const Status& st) {
  return st.code() == Code::kAlreadyExists || st.code() == Code::kFailedPrecondition ||
         st.code() == Code::kInvalidArgument;
}

std::string Name(v1::ShardInfo::State s) {
  switch (s) {
    case v1::ShardInfo::SHARD_CREATING: return "creating";
    case v1::ShardInfo::SHARD_ACTIVE: return "active";
    case v1::ShardInfo::SHARD_DRAINING: return "draining";
    case v1::ShardInfo::SHARD_RETIRED: return "retired";
    default: return "unknown";
  }
}

}  // namespace

std::vector<v1::ShardInfo> MetadataService::FullShardMap(const std::vector<v1::ShardInfo>& recorded,
                                                         const ShardDefaults& defaults) {
  std::vector<v1::ShardInfo> out;
  size_t r = 0;
  for (uint32_t s = 0; s < defaults.shards; ++s) {
    while (r < recorded.size() && recorded[r].shard() < s) out.push_back(recorded[r++]);
    if (r < recorded.size() && recorded[r].shard() == s) {
      out.push_back(recorded[r++]);
      continue;
    }
    v1::ShardInfo info;
    info.set_shard(s);
    info.set_state(v1::ShardInfo::SHARD_ACTIVE);
    for (uint64_t id : defaults.bootstrap) info.add_replicas(id);
    out.push_back(std::move(info));
  }
  while (r < recorded.size()) out.push_back(recorded[r++]);
  return out;
}

grpc::Status MetadataService::GetShardMap(grpc::ServerContext* ctx, const v1::GetShardMapRequest*,
                                          v1::GetShardMapResponse* resp) {
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  for (auto& s : ShardMap()) *resp->add_shards() = std::move(s);
  return grpc::Status::OK;
}

grpc::Status MetadataService::AddShard(grpc::ServerContext* ctx, const v1::AddShardRequest* req,
                                       v1::AddShardResponse* resp) {
  std::vector<uint64_t> replicas(req->replicas().begin(), req->replicas().end());
  if (replicas.empty()) replicas = defaults_.bootstrap;
  std::sort(replicas.begin(), replicas.end());
  if (std::adjacent_find(replicas.begin(), replicas.end()) != replicas.end()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a node is listed twice");
  }
  for (uint64_t id : replicas) {
    if (!defaults_.known.count(id)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "node " + std::to_string(id) +
                              " is not in queue.peers (every queue node's configuration must list it, "
                              "with join: true if it came later)");
    }
  }
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  std::unique_lock lock(shard_mu_);  // the next free id, until committed
  const auto map = ShardMap();
  const uint32_t id = map.empty() ? 0 : map.back().shard() + 1;
  if (id > kMaxShardId) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "shard ids end at " + std::to_string(kMaxShardId) + " (Raft port + shard id)");
  }
  v1::QueueCommand cmd = Command();
  auto* info = cmd.mutable_shard_map()->mutable_info();
  info->set_shard(id);
  info->set_state(v1::ShardInfo::SHARD_CREATING);
  for (uint64_t r : replicas) info->add_replicas(r);
  cmd.mutable_shard_map()->set_create(true);
  ApplyResult r = replica_.CommitAndWait(std::move(cmd));
  if (IsVerdict(r.status)) return Verdict(r.status);
  if (!r.status.ok()) return replica_.CommitError(ctx, r.status);
  lock.unlock();  // the new shard's leader makes it active (SetShardState)
  std::string nodes;
  for (uint64_t n : replicas) nodes += (nodes.empty() ? "" : ",") + std::to_string(n);
  log::Info(replica_.tag() + ": shard " + std::to_string(id) + " added on nodes " + nodes +
            "; waiting for its replicas to elect a leader");
  // Its replicas see the map within a second or two, bootstrap the group,
  // and the first leader marks it active (QueueNode's shard watcher).
  const auto limit = std::min<std::chrono::system_clock::time_point>(
      ctx->deadline() - std::chrono::seconds(1), std::chrono::system_clock::now() + std::chrono::seconds(60));
  for (;;) {
    for (const auto& s : ShardMap()) {
      if (s.shard() == id) *resp->mutable_info() = s;
    }
    if (resp->info().state() != v1::ShardInfo::SHARD_CREATING || std::chrono::system_clock::now() >= limit ||
        ctx->IsCancelled()) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return grpc::Status::OK;
}

grpc::Status MetadataService::SetShardState(grpc::ServerContext* ctx, const v1::SetShardStateRequest* req,
                                            v1::SetShardStateResponse* resp) {
  if (req->state() == v1::ShardInfo::SHARD_STATE_UNSPECIFIED || req->state() == v1::ShardInfo::SHARD_CREATING) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a shard's state moves to active, draining or retired");
  }
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  std::lock_guard lock(shard_mu_);
  const auto map = ShardMap();
  auto it = std::find_if(map.begin(), map.end(), [&](const auto& s) { return s.shard() == req->shard(); });
  if (it == map.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no shard " + std::to_string(req->shard()) + " in the map");
  }
  const bool upgrade_to_move = req->state() == v1::ShardInfo::SHARD_DRAINING && req->move() && !it->move();
  if (it->state() == req->state() && !upgrade_to_move) {
    *resp->mutable_info() = *it;
    return grpc::Status::OK;  // already there (a retried request)
  }
  if (req->state() == v1::ShardInfo::SHARD_DRAINING) {
    if (req->shard() == kMetadataShard) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "shard " + std::to_string(kMetadataShard) +
                              " holds the cluster's metadata (node table, policy, shard map): it cannot be drained");
    }
    const bool another_active = std::any_of(map.begin(), map.end(), [&](const auto& s) {
      return s.shard() != req->shard() && s.state() == v1::ShardInfo::SHARD_ACTIVE;
    });
    if (!another_active) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "shard " + std::to_string(req->shard()) +
                              " is the last active shard: add one first (mxctl cluster add-shard)");
    }
  }
  if (req->state() == v1::ShardInfo::SHARD_RETIRED && it->state() != v1::ShardInfo::SHARD_DRAINING) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "shard " + std::to_string(req->shard()) + " is " + Name(it->state()) +
                            ": a shard retires once drained (mxctl cluster drain-shard)");
  }
  v1::QueueCommand cmd = Command();
  *cmd.mutable_shard_map()->mutable_info() = *it;
  cmd.mutable_shard_map()->mutable_info()->set_state(req->state());
  if (upgrade_to_move) cmd.mutable_shard_map()->mutable_info()->set_move(true);
  ApplyResult r = replica_.CommitAndWait(std::move(cmd));
  if (IsVerdict(r.status)) return Verdict(r.status);
  if (!r.status.ok()) return replica_.CommitError(ctx, r.status);
  for (const auto& s : ShardMap()) {
    if (s.shard() == req->shard()) *resp->mutable_info() = s;
  }
  log::Info(replica_.tag() + ": shard " + std::to_string(req->shard()) + " is " + Name(req->state()) +
            (resp->info().move() && req->state() == v1::ShardInfo::SHARD_DRAINING ? " (moving its messages)" : ""));
  return grpc::Status::OK;
}

}  // namespace mx::queue
