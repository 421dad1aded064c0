// metadata_service.cc — the metadata shard's RPCs: checks, then a replicated
// command (node table, policy, sites, suppressions) or the leader's permits.
#include "metadata_service.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "probe.h"

namespace mx::queue {
namespace {

grpc::Status Invalid(const std::string& why) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, why);
}

// At most max bytes, cut at a UTF-8 character boundary.
std::string CutUtf8(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return s.substr(0, cut);
}

}  // namespace

v1::QueueCommand MetadataService::Command() const {
  v1::QueueCommand cmd;
  cmd.set_now_unix_us(clock_.NowUnixMicros());
  return cmd;
}

grpc::Status MetadataService::Committed(grpc::ServerContext* ctx, v1::QueueCommand cmd, ApplyResult* out) {
  ApplyResult r = replica_.CommitAndWait(std::move(cmd));
  if (!r.status.ok()) return replica_.CommitError(ctx, r.status);
  if (out) *out = std::move(r);
  return grpc::Status::OK;
}

grpc::Status MetadataService::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                        v1::HeartbeatResponse* resp) {
  const auto& name = req->node().name();
  if (name.empty() || name.size() > 253) return Invalid("a heartbeat needs the node's name (1 to 253 bytes)");
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  v1::QueueCommand cmd = Command();
  cmd.mutable_node()->set_kind(v1::NodeOp::NODE_HEARTBEAT);
  *cmd.mutable_node()->mutable_info() = req->node();
  if (auto st = Committed(ctx, std::move(cmd)); !st.ok()) return st;
  resp->set_drain(replica_.state().NodeDrain(name));
  resp->set_policy_version(replica_.state().PolicyVersion());
  return grpc::Status::OK;
}

grpc::Status MetadataService::ListNodes(grpc::ServerContext* ctx, const v1::ListNodesRequest*,
                                        v1::ListNodesResponse* resp) {
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  replica_.state().Nodes(resp);
  resp->set_now_unix_us(clock_.NowUnixMicros());
  return grpc::Status::OK;
}

grpc::Status MetadataService::SetDrain(grpc::ServerContext* ctx, const v1::SetDrainRequest* req,
                                       v1::SetDrainResponse*) {
  if (req->name().empty()) return Invalid("which node?");
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  v1::QueueCommand cmd = Command();
  cmd.mutable_node()->set_kind(req->forget()  ? v1::NodeOp::NODE_FORGET
                               : req->drain() ? v1::NodeOp::NODE_DRAIN
                                              : v1::NodeOp::NODE_UNDRAIN);
  cmd.mutable_node()->mutable_info()->set_name(req->name());
  ApplyResult r = replica_.CommitAndWait(std::move(cmd));
  if (r.status.code() == Code::kNotFound) return grpc::Status(grpc::StatusCode::NOT_FOUND, r.status.message());
  if (!r.status.ok()) return replica_.CommitError(ctx, r.status);
  log::Info(replica_.tag() + ": node " + req->name() +
            (req->forget()  ? " forgotten"
             : req->drain() ? " to drain"
                            : " back to work"));
  return grpc::Status::OK;
}

// Versions count up: "v<N>-<8 hex of a hash of the content>".
grpc::Status MetadataService::PutPolicy(grpc::ServerContext* ctx, const v1::PutPolicyRequest* req,
                                        v1::PutPolicyResponse* resp) {
  if (req->bundle().yaml().empty()) return Invalid("an empty policy");
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  std::lock_guard lock(policy_mu_);
  const std::string prev = replica_.state().PolicyVersion();
  const uint64_t n = prev.size() > 1 ? std::strtoull(prev.c_str() + 1, nullptr, 10) : 0;
  v1::QueueCommand cmd = Command();
  *cmd.mutable_policy() = req->bundle();
  std::string content = req->bundle().yaml();
  const std::map<std::string, std::string> files(req->bundle().files().begin(), req->bundle().files().end());
  for (const auto& [path, text] : files) content.append("\n").append(path).append("\n").append(text);
  char hash[16];
  snprintf(hash, sizeof hash, "%08zx", std::hash<std::string>{}(content)&0xffffffffu);
  const std::string version = "v" + std::to_string(n + 1) + "-" + hash;
  cmd.mutable_policy()->set_version(version);
  if (auto st = Committed(ctx, std::move(cmd)); !st.ok()) return st;
  resp->set_version(version);
  log::Info(replica_.tag() + ": acceptance policy " + version + " stored (by " + req->bundle().applied_by() + ")");
  return grpc::Status::OK;
}

grpc::Status MetadataService::GetPolicy(grpc::ServerContext* ctx, const v1::GetPolicyRequest* req,
                                        v1::GetPolicyResponse* resp) {
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  *resp->mutable_bundle() = replica_.state().CurrentPolicy();
  if (req->version_only()) resp->mutable_bundle()->clear_files();
  return grpc::Status::OK;
}

grpc::Status MetadataService::SetSiteStatus(grpc::ServerContext* ctx, const v1::SetSiteStatusRequest* req,
                                            v1::SetSiteStatusResponse*) {
  const auto& st = req->status();
  if (st.site().empty() || st.site().size() > 1024) return Invalid("which site? (1 to 1024 characters)");
  if (!req->clear() && st.until_unix_us() <= clock_.NowUnixMicros()) {
    return Invalid("a site status needs a time in the future");
  }
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  v1::QueueCommand cmd = Command();
  *cmd.mutable_site()->mutable_status() = st;
  cmd.mutable_site()->mutable_status()->set_reason(CutUtf8(st.reason(), 512));
  cmd.mutable_site()->set_clear(req->clear());
  if (auto s = Committed(ctx, std::move(cmd)); !s.ok()) return s;
  log::Info(replica_.tag() + ": site " + st.site() +
            (req->clear() ? " resumed" : (st.suspended() ? " suspended" : " slowed")) + " (" + st.by() + ")");
  return grpc::Status::OK;
}

grpc::Status MetadataService::ListSiteStatus(grpc::ServerContext* ctx, const v1::ListSiteStatusRequest*,
                                             v1::ListSiteStatusResponse* resp) {
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  const int64_t now = clock_.NowUnixMicros();
  replica_.state().Sites(now, resp);
  resp->set_now_unix_us(now);
  return grpc::Status::OK;
}

grpc::Status MetadataService::Suppress(grpc::ServerContext* ctx, const v1::SuppressRequest* req,
                                       v1::SuppressResponse* resp) {
  if (req->add_size() + req->remove_size() > 10000) return Invalid("at most 10000 addresses per call");
  auto bad = [](const std::string& a) { return a.empty() || a.size() > 320 || a.find('@') == std::string::npos; };
  v1::QueueCommand cmd;
  for (const auto& a : req->add()) {
    if (bad(a.address())) return Invalid("not an address: '" + a.address() + "'");
    v1::Suppression* e = cmd.mutable_suppress()->add_add();
    *e = a;
    e->set_address(ToLower(a.address()));
    e->set_reason(CutUtf8(e->reason(), 512));
  }
  for (const auto& a : req->remove()) {
    if (bad(a)) return Invalid("not an address: '" + a + "'");
    cmd.mutable_suppress()->add_remove(ToLower(a));
  }
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  cmd.set_now_unix_us(clock_.NowUnixMicros());
  ApplyResult r;
  if (auto st = Committed(ctx, std::move(cmd), &r); !st.ok()) return st;
  resp->set_added(r.suppressed);
  resp->set_removed(r.unsuppressed);
  return grpc::Status::OK;
}

grpc::Status MetadataService::ListSuppressions(grpc::ServerContext* ctx, const v1::ListSuppressionsRequest* req,
                                               v1::ListSuppressionsResponse* resp) {
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  v1::ListSuppressionsRequest r = *req;
  r.set_address(ToLower(req->address()));
  replica_.state().Suppressions(r, resp);
  return grpc::Status::OK;
}

grpc::Status MetadataService::Permit(grpc::ServerContext* ctx, const v1::PermitRequest* req, v1::PermitResponse* resp) {
  if (req->holds_size() > 10000) return Invalid("at most 10000 holds");
  for (const auto& h : req->holds()) {
    if (h.holder().empty() && req->op() != v1::PermitRequest::RATE) return Invalid("every hold needs a holder");
    for (const auto& k : h.keys()) {
      if (k.key().empty() || k.key().size() > 512) return Invalid("permit keys are 1 to 512 bytes");
    }
  }
  if ((req->op() == v1::PermitRequest::ACQUIRE || req->op() == v1::PermitRequest::RATE) && req->holds_size() != 1) {
    return Invalid("ACQUIRE and RATE take exactly one hold");
  }
  if (!replica_.IsLeader()) return replica_.RefuseNotLeader(ctx);
  const int64_t now = clock_.NowUnixMicros();
  const int64_t ttl = std::clamp<int64_t>(int64_t{req->ttl_ms()} * 1000, 1'000'000, kPermitTtlUs);
  auto asks = [](const v1::PermitHold& h) {
    std::vector<Permits::Ask> out;
    for (const auto& k : h.keys()) out.push_back(Permits::Ask{k.key(), k.limit()});
    return out;
  };
  int64_t retry = 0;
  bool granted = true;
  switch (req->op()) {
    case v1::PermitRequest::ACQUIRE:
      granted = permits_.Acquire(req->holds(0).holder(), asks(req->holds(0)), ttl, now, &retry);
      Probe::Get().Permit("acquire", granted);
      break;
    case v1::PermitRequest::RENEW:
      for (const auto& h : req->holds()) permits_.Renew(h.holder(), asks(h), ttl, now);
      break;
    case v1::PermitRequest::RELEASE:
      for (const auto& h : req->holds()) permits_.Release(h.holder());
      break;
    case v1::PermitRequest::RATE:
      for (const auto& k : req->holds(0).keys()) {
        if (!permits_.Rate(k.key(), k.limit(), k.period_s() ? k.period_s() : 60, now, &retry)) {
          granted = false;
          break;
        }
      }
      Probe::Get().Permit("rate", granted);
      break;
    default: return Invalid("unknown permit op");
  }
  resp->set_granted(granted);
  resp->set_retry_after_ms(static_cast<uint32_t>(std::min<int64_t>((retry + 999) / 1000, 3'600'000)));
  return grpc::Status::OK;
}

}  // namespace mx::queue
