// admin_service.cc — Admin RPCs answered from the queue shards' leaders.
#include "mx/control/admin_service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "fan_out.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/queue/client.h"
#include "mx/queue/metadata_client.h"
#include "mx/queue/shard_map.h"
#include "mx/v1/control.grpc.pb.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::control {
namespace {

// How long a call to one shard is retried (leader hints, an election) when
// the caller set no deadline of its own.
constexpr auto kShardDeadline = std::chrono::seconds(10);

using Failures = google::protobuf::RepeatedPtrField<v1::ShardFailure>;

// mxctl's -I/-S/-R/-D as the queue's filter (qrun, hold, release, delete).
v1::RunOp RunFilter(const v1::QueueRunRequest& req) {
  v1::RunOp f;
  f.set_qid_substring(req.qid());
  f.set_sender_substring(req.sender());
  f.set_rcpt_substring(req.recipient());
  f.set_domain(req.domain());
  return f;
}

// The filter as mxctl options, for the audit log.
std::string FilterText(const v1::QueueRunRequest& req) {
  std::string out;
  for (auto [flag, v] : {std::pair{"-I", &req.qid()}, std::pair{"-S", &req.sender()}, std::pair{"-R", &req.recipient()},
                         std::pair{"-D", &req.domain()}}) {
    if (!v->empty()) out += std::string(out.empty() ? "" : " ") + flag + " " + *v;
  }
  return out.empty() ? "(everything)" : out;
}

class AdminService final : public v1::Admin::Service {
 public:
  AdminService(const std::vector<std::string>& queues, uint32_t shards, AdminAuth auth, PolicyTestFn policy_test,
               PolicyValidateFn validate)
      : router_(queues, shards),
        auth_(std::move(auth)),
        policy_test_(std::move(policy_test)),
        validate_(std::move(validate)),
        follower_(router_, std::chrono::seconds(2)) {}

  grpc::Status PolicyApply(grpc::ServerContext* ctx, const v1::PolicyApplyRequest* req,
                           v1::PolicyApplyResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "PolicyApply", &who); !st.ok()) return st;
    if (!validate_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this control node cannot check policies");
    v1::PutPolicyRequest put;
    *put.mutable_bundle() = req->bundle();
    put.mutable_bundle()->clear_version();
    put.mutable_bundle()->set_applied_by(who);
    // Checked whole, as every node will load it: nothing is stored otherwise.
    auto description = validate_(put.bundle());
    if (!description.ok()) {
      log::Warn("admin: " + who + ": policy apply refused: " + description.status().message());
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "policy refused: " + description.status().message());
    }
    v1::PutPolicyResponse stored;
    auto st = CallMetadata(&v1::Metadata::Stub::PutPolicy, put, &stored);
    if (!st.ok()) return st;
    resp->set_version(stored.version());
    resp->set_description(*description);
    log::Info("admin: " + who + ": policy " + stored.version() + " applied: " + *description);
    return grpc::Status::OK;
  }

  grpc::Status PolicyShow(grpc::ServerContext* ctx, const v1::PolicyShowRequest*,
                          v1::PolicyShowResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "PolicyShow", &who); !st.ok()) return st;
    v1::GetPolicyRequest get;
    v1::GetPolicyResponse current;
    auto st = CallMetadata(&v1::Metadata::Stub::GetPolicy, get, &current);
    if (!st.ok()) return st;
    *resp->mutable_current() = std::move(*current.mutable_bundle());
    for (auto& [path, text] : *resp->mutable_current()->mutable_files()) text.clear();  // names, not contents
    v1::ListNodesRequest list;
    v1::ListNodesResponse nodes;
    st = CallMetadata(&v1::Metadata::Stub::ListNodes, list, &nodes);
    if (!st.ok()) return st;
    for (auto& n : *nodes.mutable_nodes()) *resp->add_nodes() = std::move(n);
    return grpc::Status::OK;
  }

  grpc::Status PolicyTest(grpc::ServerContext* ctx, const v1::PolicyTestRequest* req,
                          v1::PolicyTestResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "PolicyTest", &who); !st.ok()) return st;
    if (!policy_test_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this node has no policy to test");
    return policy_test_(*req, resp);
  }

  grpc::Status Mailq(grpc::ServerContext* ctx, const v1::MailqRequest* req, v1::MailqResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "Mailq", &who); !st.ok()) return st;
    v1::ListRequest list;
    list.set_qid(req->qid());
    list.set_sender(req->sender());
    list.set_recipient(req->recipient());
    list.set_limit(req->limit());
    std::vector<std::optional<v1::ListResponse>> parts;
    auto st = AskShards(*ctx, "mailq", &v1::Queue::Stub::List, list, &parts, resp->mutable_failed_shards());
    if (!st.ok()) return st;
    for (auto& part : parts) {
      if (!part) continue;
      for (auto& m : *part->mutable_messages()) *resp->add_messages() = std::move(m);
      resp->set_matched(resp->matched() + part->matched());
    }
    // Oldest first across shards (qids are time-ordered).
    std::sort(
        resp->mutable_messages()->begin(), resp->mutable_messages()->end(),
        [](const v1::QueuedMessage& a, const v1::QueuedMessage& b) { return a.envelope().qid() < b.envelope().qid(); });
    return grpc::Status::OK;
  }

  grpc::Status QueueRun(grpc::ServerContext* ctx, const v1::QueueRunRequest* req, v1::QueueRunResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "QueueRun", &who); !st.ok()) return st;
    v1::RunQueueRequest run;
    *run.mutable_filter() = RunFilter(*req);
    std::vector<std::optional<v1::RunQueueResponse>> parts;
    // A queue run is idempotent, so CallLeader's retries are safe.
    auto st = AskShards(*ctx, "qrun", &v1::Queue::Stub::RunQueue, run, &parts, resp->mutable_failed_shards());
    if (!st.ok()) return st;
    for (const auto& part : parts) {
      if (part) resp->set_made_ready(resp->made_ready() + part->made_ready());
    }
    log::Info("admin: " + who + ": qrun " + FilterText(*req) + ": " + std::to_string(resp->made_ready()) +
              " recipient(s) made ready" + Partial(resp->failed_shards()));
    return grpc::Status::OK;
  }

  grpc::Status Manage(grpc::ServerContext* ctx, const v1::ManageQueueRequest* req,
                      v1::ManageQueueResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "Manage", &who); !st.ok()) return st;
    v1::ManageRequest m;
    m.mutable_op()->set_action(req->action());
    *m.mutable_op()->mutable_filter() = RunFilter(req->filter());
    std::vector<std::optional<v1::ManageResponse>> parts;
    // CallLeader retries on UNAVAILABLE/DEADLINE_EXCEEDED: harmless here, a
    // repeated hold/release/delete finds nothing left to change (the counts
    // then cover only the last attempt).
    auto st = AskShards(*ctx, v1::ManageOp::Action_Name(req->action()), &v1::Queue::Stub::Manage, m, &parts,
                        resp->mutable_failed_shards());
    if (!st.ok()) return st;
    for (const auto& part : parts) {
      if (!part) continue;
      resp->set_recipients(resp->recipients() + part->recipients());
      resp->set_messages(resp->messages() + part->messages());
      resp->set_skipped(resp->skipped() + part->skipped());
    }
    log::Info("admin: " + who + ": " + v1::ManageOp::Action_Name(req->action()) + " " + FilterText(req->filter()) +
              ": " + std::to_string(resp->recipients()) + " recipient(s), " + std::to_string(resp->messages()) +
              " message(s) deleted, " + std::to_string(resp->skipped()) + " in delivery left alone" +
              Partial(resp->failed_shards()));
    return grpc::Status::OK;
  }

  grpc::Status Drain(grpc::ServerContext* ctx, const v1::DrainRequest* req, v1::DrainResponse*) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "Drain", &who); !st.ok()) return st;
    if (req->name().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "drain needs a node name");
    v1::SetDrainRequest set;
    set.set_name(req->name());
    set.set_drain(!req->undrain());
    set.set_forget(req->forget());
    v1::SetDrainResponse ignored;
    auto st = CallMetadata(&v1::Metadata::Stub::SetDrain, set, &ignored);
    if (!st.ok()) return st;
    log::Info("admin: " + who + ": " +
              (req->forget()    ? "forget "
               : req->undrain() ? "undrain "
                                : "drain ") +
              req->name());
    return grpc::Status::OK;
  }

  grpc::Status SiteSuspend(grpc::ServerContext* ctx, const v1::SiteSuspendRequest* req,
                           v1::SiteSuspendResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "SiteSuspend", &who); !st.ok()) return st;
    if (req->site().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "which site?");
    if (!req->resume() && (req->duration_s() == 0 || req->duration_s() > 30 * 86400)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "suspend needs a duration from 1s to 30d");
    }
    const int64_t now =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    v1::SetSiteStatusRequest set;
    set.set_clear(req->resume());
    auto* status = set.mutable_status();
    status->set_site(req->site());
    status->set_suspended(true);
    status->set_until_unix_us(now + static_cast<int64_t>(req->duration_s()) * 1'000'000);
    status->set_reason(req->reason().empty() ? "suspended by the operator" : req->reason());
    status->set_by("mxctl (" + who + ")");
    v1::SetSiteStatusResponse ignored;
    auto st = CallMetadata(&v1::Metadata::Stub::SetSiteStatus, set, &ignored);
    if (!st.ok()) return st;
    if (!req->resume()) resp->set_until_unix_us(status->until_unix_us());
    log::Info("admin: " + who + ": " + (req->resume() ? "resume " : "suspend ") + req->site() +
              (req->resume() ? "" : " for " + std::to_string(req->duration_s()) + "s"));
    return grpc::Status::OK;
  }

  grpc::Status Sites(grpc::ServerContext* ctx, const v1::SitesRequest*, v1::SitesResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "Sites", &who); !st.ok()) return st;
    v1::ListSiteStatusRequest req;
    v1::ListSiteStatusResponse part;
    auto st = CallMetadata(&v1::Metadata::Stub::ListSiteStatus, req, &part);
    if (!st.ok()) return st;
    resp->mutable_sites()->Swap(part.mutable_sites());
    resp->set_now_unix_us(part.now_unix_us());
    return grpc::Status::OK;
  }

  grpc::Status Suppress(grpc::ServerContext* ctx, const v1::SuppressAdminRequest* req,
                        v1::SuppressAdminResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "Suppress", &who); !st.ok()) return st;
    if (req->add().empty() && req->remove().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "which address?");
    }
    v1::SuppressRequest set;
    for (const auto& a : req->add()) {
      auto* e = set.add_add();
      e->set_address(a);
      e->set_reason(req->reason().empty() ? "suppressed by the operator" : req->reason());
      e->set_bounce_class("manual");
      e->set_by("mxctl (" + who + ")");
    }
    for (const auto& a : req->remove()) set.add_remove(a);
    v1::SuppressResponse done;
    auto st = CallMetadata(&v1::Metadata::Stub::Suppress, set, &done);
    if (!st.ok()) return st;
    resp->set_added(done.added());
    resp->set_removed(done.removed());
    const std::string by = "admin: " + who;
    for (const auto& a : req->add()) log::Info(std::string(by).append(": suppress ").append(a));
    for (const auto& a : req->remove()) log::Info(std::string(by).append(": unsuppress ").append(a));
    return grpc::Status::OK;
  }

  grpc::Status Suppressions(grpc::ServerContext* ctx, const v1::SuppressionsRequest* req,
                            v1::SuppressionsResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "Suppressions", &who); !st.ok()) return st;
    const uint32_t limit = req->limit() == 0 ? 100 : std::min<uint32_t>(req->limit(), 10000);
    v1::ListSuppressionsRequest list;
    v1::ListSuppressionsResponse part;
    auto call = [&] {
      part.Clear();
      return CallMetadata(&v1::Metadata::Stub::ListSuppressions, list, &part);
    };
    if (!req->address().empty()) {
      list.set_address(req->address());
    } else {
      // The newest changes: find the last sequence number, then read back from it.
      list.set_after_seq(std::numeric_limits<uint64_t>::max() - 1);
      if (auto st = call(); !st.ok()) return st;
      const uint64_t back = std::min<uint64_t>(part.last_seq(), static_cast<uint64_t>(limit) * 4);
      list.set_after_seq(part.last_seq() - back);
      list.set_limit(10000);
    }
    if (auto st = call(); !st.ok()) return st;
    for (int k = part.entries_size() - 1; k >= 0 && static_cast<uint32_t>(resp->entries_size()) < limit; --k) {
      if (!part.entries(k).removed()) *resp->add_entries() = part.entries(k);
    }
    resp->set_total(part.total());
    return grpc::Status::OK;
  }

  grpc::Status Inspect(grpc::ServerContext* ctx, const v1::InspectRequest* req, v1::InspectResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "Inspect", &who); !st.ok()) return st;
    if (req->qid().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "inspect needs a queue id");
    // A queue id does not say its shard: ask them all.
    const uint32_t n = router_.shards();  // the map may grow meanwhile
    std::vector<v1::GetMessageResponse> parts(n);
    auto statuses = FanOut(n, FanOutDeadline(ctx->deadline(), kShardDeadline), [&](uint32_t shard, Deadline deadline) {
      if (!router_.Serving(shard)) return grpc::Status(grpc::StatusCode::NOT_FOUND, "retired or creating");
      v1::GetMessageRequest get;
      get.set_shard(shard);
      get.set_qid(req->qid());
      return CallLeader(
          shard, [&](v1::Queue::Stub* stub, grpc::ClientContext* c) { return stub->GetMessage(c, get, &parts[shard]); },
          deadline);
    });
    for (uint32_t shard = 0; shard < statuses.size(); ++shard) {
      if (!statuses[shard].ok()) continue;
      auto& part = parts[shard];
      *resp->mutable_message() = std::move(*part.mutable_message());
      resp->set_headers(std::move(*part.mutable_headers()));
      resp->set_body_bytes(part.body_bytes());
      resp->set_shard(shard);
      return grpc::Status::OK;
    }
    for (auto& st : statuses) {
      const auto code = st.error_code();
      if (code == grpc::StatusCode::NOT_FOUND) st = grpc::Status::OK;  // answered: not here
      // A bad queue id is bad on every shard.
      if (code == grpc::StatusCode::INVALID_ARGUMENT || code == grpc::StatusCode::PERMISSION_DENIED) return st;
    }
    if (std::string failed = DescribeFailures(statuses); !failed.empty()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "no message " + req->qid() + " on the shards that answered; not answered: " + failed);
    }
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "no message " + req->qid() + " in the queue");
  }

  grpc::Status HostStatus(grpc::ServerContext* ctx, const v1::HostStatusRequest*,
                          v1::HostStatusResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "HostStatus", &who); !st.ok()) return st;
    std::map<std::string, v1::HostStatus> merged;
    std::vector<std::optional<v1::ListHostStatusResponse>> parts;
    auto st = AskShards(*ctx, "hoststat", &v1::Queue::Stub::ListHostStatus, v1::ListHostStatusRequest(), &parts,
                        resp->mutable_failed_shards());
    if (!st.ok()) return st;
    for (auto& part : parts) {
      if (!part) continue;
      for (auto& h : *part->mutable_hosts()) {
        auto [it, fresh] = merged.emplace(h.host(), h);
        if (!fresh && h.last_attempt_unix_us() > it->second.last_attempt_unix_us()) it->second = std::move(h);
      }
    }
    for (auto& [_, h] : merged) *resp->add_hosts() = std::move(h);
    resp->set_now_unix_us(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    return grpc::Status::OK;
  }

  grpc::Status PurgeHostStatus(grpc::ServerContext* ctx, const v1::PurgeHostStatusRequest* req,
                               v1::PurgeStatResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "PurgeHostStatus", &who); !st.ok()) return st;
    std::vector<std::optional<v1::PurgeHostStatusResponse>> parts;
    auto st =
        AskShards(*ctx, "purgestat", &v1::Queue::Stub::PurgeHostStatus, *req, &parts, resp->mutable_failed_shards());
    if (!st.ok()) return st;
    for (const auto& part : parts) {
      if (part) resp->set_purged(resp->purged() + part->purged());
    }
    log::Info("admin: " + who + ": purgestat " + (req->host().empty() ? "(every host)" : req->host()) + ": " +
              std::to_string(resp->purged()) + " purged" + Partial(resp->failed_shards()));
    return grpc::Status::OK;
  }

  grpc::Status Mailstats(grpc::ServerContext* ctx, const v1::MailstatsRequest* request,
                         v1::MailstatsResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, request->reset() ? Role::kOperator : Role::kRead, "Mailstats", &who); !st.ok()) {
      return st;
    }
    std::map<std::string, v1::MailerStats> sum;
    int64_t since = 0;
    std::vector<std::optional<v1::GetStatsResponse>> parts;
    auto st = AskShards(*ctx, "mailstats", &v1::Queue::Stub::GetStats, v1::GetStatsRequest(), &parts,
                        resp->mutable_failed_shards());
    if (!st.ok()) return st;
    for (const auto& part : parts) {
      if (!part) continue;
      if (part->since_unix_us() && (since == 0 || part->since_unix_us() < since)) since = part->since_unix_us();
      for (const auto& m : part->mailers()) {
        auto& t = sum[m.mailer()];
        t.set_mailer(m.mailer());
        t.set_msgsfr(t.msgsfr() + m.msgsfr());
        t.set_bytes_from(t.bytes_from() + m.bytes_from());
        t.set_msgsto(t.msgsto() + m.msgsto());
        t.set_bytes_to(t.bytes_to() + m.bytes_to());
        t.set_msgsrej(t.msgsrej() + m.msgsrej());
        t.set_msgsdis(t.msgsdis() + m.msgsdis());
      }
    }
    for (auto& [_, m] : sum) *resp->add_mailers() = m;
    resp->set_since_unix_us(since);
    if (request->reset()) {
      // Counts that arrive between the read above and the reset are not
      // shown. Only the shards whose counts were read are reset.
      const auto deadline = FanOutDeadline(ctx->deadline(), kShardDeadline);
      for (uint32_t shard = 0; shard < parts.size(); ++shard) {
        if (!parts[shard]) continue;
        v1::RecordStatsRequest reset;
        reset.set_shard(shard);
        reset.set_reset(true);
        v1::RecordStatsResponse ignored;
        auto st = CallLeader(
            shard, [&](v1::Queue::Stub* stub, grpc::ClientContext* c) { return stub->RecordStats(c, reset, &ignored); },
            deadline);
        if (!st.ok()) return st;
      }
      log::Info("admin: " + who + ": mailstats reset" + Partial(resp->failed_shards()));
    }
    return grpc::Status::OK;
  }

  grpc::Status ClusterStatus(grpc::ServerContext* ctx, const v1::ClusterStatusRequest*,
                             v1::ClusterStatusResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kRead, "ClusterStatus", &who); !st.ok()) return st;
    resp->set_shards(router_.shards());
    v1::GetShardMapResponse map;
    if (CallMetadata(&v1::Metadata::Stub::GetShardMap, v1::GetShardMapRequest(), &map).ok()) {
      for (auto& s : *map.mutable_shards()) *resp->add_shard_map() = std::move(s);
    }
    // Every node known: the configured ones and those the members tables name.
    std::set<std::string> asked;
    std::vector<std::string> todo = router_.Addresses();
    while (!todo.empty()) {
      std::string address = todo.back();
      todo.pop_back();
      if (!asked.insert(address).second) continue;
      auto stub = v1::Queue::NewStub(MakeChannel(address));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      v1::GetReplicaStatusResponse node;
      auto st = stub->GetReplicaStatus(&ctx, v1::GetReplicaStatusRequest(), &node);
      if (!st.ok()) {
        auto* u = resp->add_unreachable();
        u->set_address(address);
        u->set_error(st.error_message());
        continue;
      }
      for (const auto& r : node.replicas()) {
        if (!r.leader_address().empty()) todo.push_back(r.leader_address());
        for (const auto& m : r.members()) {
          if (!m.grpc_address().empty()) todo.push_back(m.grpc_address());
        }
      }
      *resp->add_nodes() = std::move(node);
    }
    std::sort(resp->mutable_nodes()->begin(), resp->mutable_nodes()->end(),
              [](const auto& a, const auto& b) { return a.node_id() < b.node_id(); });
    // The processes' own reports (the node table on shard 0); without a
    // leader the replica table above still answers.
    v1::ListNodesRequest list;
    v1::ListNodesResponse nodes;
    auto st = CallMetadata(&v1::Metadata::Stub::ListNodes, list, &nodes);
    if (st.ok()) {
      for (auto& n : *nodes.mutable_nodes()) *resp->add_processes() = std::move(n);
      resp->set_now_unix_us(nodes.now_unix_us());
    } else {
      auto* u = resp->add_unreachable();
      u->set_address("node table (shard 0)");
      u->set_error(st.error_message());
    }
    return grpc::Status::OK;
  }

  grpc::Status AddReplica(grpc::ServerContext* ctx, const v1::AddReplicaRequest* req,
                          v1::AddReplicaResponse* resp) override {
    return ToShardLeader(*ctx, "AddReplica", &v1::Queue::Stub::AddReplica, *req, resp, std::chrono::minutes(3));
  }

  grpc::Status RemoveReplica(grpc::ServerContext* ctx, const v1::RemoveReplicaRequest* req,
                             v1::RemoveReplicaResponse* resp) override {
    return ToShardLeader(*ctx, "RemoveReplica", &v1::Queue::Stub::RemoveReplica, *req, resp, std::chrono::minutes(3));
  }

  grpc::Status TransferLeader(grpc::ServerContext* ctx, const v1::TransferLeaderRequest* req,
                              v1::TransferLeaderResponse* resp) override {
    std::string who;
    // A retry that reaches the new leader finds the transfer done (it answers
    // at once when it is the node asked for).
    auto st = ToShardLeader(*ctx, "TransferLeader", &v1::Queue::Stub::TransferLeader, *req, resp,
                            std::chrono::minutes(1), &who);
    if (st.ok()) {
      log::Info("admin: " + who + ": shard " + std::to_string(req->shard()) + " leadership to node " +
                std::to_string(resp->leader_id()));
    }
    return st;
  }

  grpc::Status AddShard(grpc::ServerContext* ctx, const v1::AddShardRequest* req, v1::AddShardResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "AddShard", &who); !st.ok()) return st;
    // One attempt (and a leader's hint): a retry after a lost answer would
    // add a second shard. The metadata leader waits up to a minute for the
    // new group's first leader.
    auto st = metadata_.Call(&v1::Metadata::Stub::AddShard, *req, resp, {std::chrono::seconds(75), {}});
    if (!st.ok()) return st;
    std::string nodes;
    for (uint64_t n : resp->info().replicas()) nodes += (nodes.empty() ? "" : ",") + std::to_string(n);
    log::Info("admin: " + who + ": shard " + std::to_string(resp->info().shard()) + " added on nodes " + nodes + ", " +
              v1::ShardInfo::State_Name(resp->info().state()));
    follower_.PollOnce();  // this node's fan-out asks it from now on
    return grpc::Status::OK;
  }

  grpc::Status DrainShard(grpc::ServerContext* ctx, const v1::DrainShardRequest* req,
                          v1::DrainShardResponse* resp) override {
    std::string who;
    if (auto st = auth_.Check(*ctx, Role::kOperator, "DrainShard", &who); !st.ok()) return st;
    v1::SetShardStateRequest set;
    set.set_shard(req->shard());
    set.set_state(v1::ShardInfo::SHARD_DRAINING);
    set.set_move(req->move());
    v1::SetShardStateResponse done;
    auto st = CallMetadata(&v1::Metadata::Stub::SetShardState, set, &done);
    if (!st.ok()) return st;
    *resp->mutable_info() = std::move(*done.mutable_info());
    log::Info("admin: " + who + ": shard " + std::to_string(req->shard()) + " draining" +
              (req->move() ? " (moving its messages to the active shards)" : ""));
    follower_.PollOnce();
    return grpc::Status::OK;
  }

 private:
  grpc::Status BadShard(uint32_t shard) const {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no shard " + std::to_string(shard) + " (the cluster has " +
                                                                std::to_string(router_.shards()) + ")");
  }

  // An operator's membership request, checked (role, shard) and forwarded to
  // req.shard()'s leader; each attempt may take per_call.
  template <typename Req, typename Resp>
  grpc::Status ToShardLeader(const grpc::ServerContext& ctx, const char* rpc,
                             grpc::Status (v1::Queue::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                             const Req& req, Resp* resp, std::chrono::seconds per_call, std::string* who = nullptr) {
    std::string name;
    if (auto st = auth_.Check(ctx, Role::kOperator, rpc, &name); !st.ok()) return st;
    if (who) *who = name;
    follower_.PollOnce();  // the shard map as it is now (membership changes are rare)
    if (req.shard() >= router_.shards()) return BadShard(req.shard());
    if (router_.Retired(req.shard())) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "shard " + std::to_string(req.shard()) + " is retired (drained; its group may be closed)");
    }
    return CallLeader(
        req.shard(), [&](v1::Queue::Stub* stub, grpc::ClientContext* c) { return (stub->*method)(c, req, resp); },
        std::chrono::system_clock::now() + kShardDeadline, per_call);
  }

  // Calls the shard's leader, following leader hints, retrying until
  // `retry_until` (an election takes about two election timeouts). Each call
  // may take `per_call`, or half the time left when that is zero.
  template <typename Fn>
  grpc::Status CallLeader(uint32_t shard, Fn call, Deadline retry_until,
                          std::chrono::seconds per_call = std::chrono::seconds(0)) {
    grpc::Status st;
    for (int attempt = 0;; ++attempt) {
      const auto now = std::chrono::system_clock::now();
      if (attempt > 0 && now >= retry_until) break;
      auto target = router_.Leader(shard);
      grpc::ClientContext ctx;
      // Without per_call, an attempt gets half the time left (at least 1 s):
      // a leader that hangs (stopped, partitioned) leaves time to find the
      // one elected after it.
      using Duration = std::chrono::system_clock::duration;
      Duration attempt_time = per_call;
      if (per_call.count() == 0) {
        const Duration left = std::max<Duration>(retry_until - now, Duration::zero());
        attempt_time = std::min<Duration>(left, std::max<Duration>(left / 2, std::chrono::seconds(1)));
      }
      ctx.set_deadline(now + attempt_time);
      st = call(target.stub, &ctx);
      bool new_leader = router_.Observe(shard, target.address, ctx, st);
      if (st.ok() || (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
                      st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED)) {
        return st;
      }
      if (!new_leader) {
        const auto pause = std::min<std::chrono::system_clock::duration>(
            std::chrono::milliseconds(std::min(1000, 100 << std::min(attempt, 4))),
            retry_until - std::chrono::system_clock::now());
        if (pause.count() > 0) std::this_thread::sleep_for(pause);
      }
    }
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "queue shard " + std::to_string(shard) + " has no reachable leader: " + st.error_message());
  }

  // Asks every shard's leader at once (FanOut), by the caller's deadline:
  // method with req, its shard set to each. (*parts)[shard] holds each
  // answer; the shards that did not answer are listed in *failed and
  // logged. UNAVAILABLE when no shard answered.
  template <typename Req, typename Resp>
  grpc::Status AskShards(const grpc::ServerContext& ctx, const std::string& what,
                         grpc::Status (v1::Queue::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                         const Req& req, std::vector<std::optional<Resp>>* parts, Failures* failed) {
    const uint32_t n = router_.shards();
    std::vector<Resp> answers(n);
    std::vector<bool> asked(n);
    for (uint32_t shard = 0; shard < n; ++shard) asked[shard] = router_.Serving(shard);
    auto statuses = FanOut(n, FanOutDeadline(ctx.deadline(), kShardDeadline), [&](uint32_t shard, Deadline deadline) {
      if (!asked[shard]) return grpc::Status::OK;  // creating or retired: holds no mail
      Req one = req;
      one.set_shard(shard);
      return CallLeader(
          shard,
          [&](v1::Queue::Stub* stub, grpc::ClientContext* c) { return (stub->*method)(c, one, &answers[shard]); },
          deadline);
    });
    parts->assign(n, std::nullopt);
    for (uint32_t shard = 0; shard < n; ++shard) {
      if (!asked[shard]) continue;
      if (statuses[shard].ok()) {
        (*parts)[shard] = std::move(answers[shard]);
        continue;
      }
      auto* f = failed->Add();
      f->set_shard(shard);
      f->set_error(statuses[shard].error_message());
    }
    if (failed->empty()) return grpc::Status::OK;
    const std::string missing = DescribeFailures(statuses);
    if (failed->size() == static_cast<int>(std::count(asked.begin(), asked.end(), true))) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no queue shard answered " + what + ": " + missing);
    }
    log::Warn("admin: " + what + ": partial answer, not answered: " + missing);
    return grpc::Status::OK;
  }

  // ", partial: shards 1, 3 did not answer" for the audit log.
  static std::string Partial(const Failures& failed) {
    if (failed.empty()) return "";
    std::string out = ", partial: shard";
    for (int k = 0; k < failed.size(); ++k) out += (k ? ", " : " ") + std::to_string(failed[k].shard());
    return out + " did not answer";
  }

  // The metadata shard's leader, retried like the shards' (CallLeader).
  template <typename Req, typename Resp>
  grpc::Status CallMetadata(grpc::Status (v1::Metadata::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                            const Req& req, Resp* resp) {
    return metadata_.Call(method, req, resp, {kShardDeadline, kShardDeadline});
  }

  queue::QueueRouter router_;
  queue::MetadataClient metadata_{router_};
  AdminAuth auth_;
  PolicyTestFn policy_test_;
  PolicyValidateFn validate_;
  queue::ShardMapFollower follower_;  // shards added online join the fan-out
};

}  // namespace

std::unique_ptr<grpc::Service> MakeAdminService(const std::vector<std::string>& queues, uint32_t shards, AdminAuth auth,
                                                PolicyTestFn policy_test, PolicyValidateFn validate) {
  return std::make_unique<AdminService>(queues, shards, std::move(auth), std::move(policy_test), std::move(validate));
}

}  // namespace mx::control
