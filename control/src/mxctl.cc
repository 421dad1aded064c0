// mxctl — the operator's tool: mailq, mailstats, cluster status, membership and
// policy tests against the control plane.
//
// Every command is one row of kCommands (name, operands, help, the token
// role it needs, the Admin RPC it calls, and its handler, which parses the
// operands and prints text or JSON); the table drives parsing, the usage
// text and dispatch.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "format.h"
#include "mx/common/config.h"
#include "mx/common/grpc_server.h"
#include "mx/common/map_file.h"
#include "mx/common/yaml_reader.h"
#include "mx/v1/control.grpc.pb.h"

namespace {

constexpr int kExUsage = 64, kExDataErr = 65, kExNoInput = 66, kExUnavailable = 69, kExNoPerm = 77;
// A queue command answered by some shards only (EX_TEMPFAIL: try again when
// the missing shards are back); what they said is printed, stderr names the rest.
constexpr int kExPartial = 75;

// mxctl policy apply --config FILE: mx.yaml and the map files its ingress
// section names (relative to FILE's directory), as one bundle.
int BuildBundle(const std::string& path, mx::v1::PolicyBundle* bundle) {
  auto yaml = mx::ReadMapFile(path);
  if (!yaml.ok()) {
    fprintf(stderr, "mxctl: cannot read %s\n", path.c_str());
    return kExNoInput;
  }
  auto cfg = mx::ParseConfig(*yaml);
  if (!cfg.ok()) {
    fprintf(stderr, "mxctl: %s: %s\n", path.c_str(), cfg.status().message().c_str());
    return kExDataErr;
  }
  bundle->set_yaml(*yaml);
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const auto& in = cfg->ingress;
  for (const std::string* f : {&in.local_domains_file, &in.relay_domains_file, &in.access_map, &in.aliases,
                               &in.virtusertable, &in.auth_users_file}) {
    if (f->empty()) continue;
    const std::string full = f->front() == '/' ? *f : dir + "/" + *f;
    auto text = mx::ReadMapFile(full);
    if (!text.ok()) {
      fprintf(stderr, "mxctl: cannot read %s (named in %s)\n", full.c_str(), path.c_str());
      return kExNoInput;
    }
    (*bundle->mutable_files())[*f] = std::move(text).value();
  }
  return 0;
}

// The first line of a token file, trimmed; "" when unreadable.
// A duration as mx.yaml writes it ("90", "30s", "15m", "2h", "1d") in whole
// seconds, from 1 s to 30 days; nullopt otherwise.
std::optional<uint32_t> ParseSeconds(const std::string& text) {
  if (text.size() > 12) return std::nullopt;  // no overflow in the multiplication
  try {
    const auto d = mx::yaml::ParseDuration("duration", text);
    if (d.count() % 1'000'000 != 0 || d < std::chrono::seconds(1) || d > std::chrono::hours(24 * 30)) {
      return std::nullopt;
    }
    return static_cast<uint32_t>(d.count() / 1'000'000);
  } catch (const mx::yaml::ConfigError&) {
    return std::nullopt;
  }
}

std::string ReadToken(const std::string& path) {
  FILE* f = fopen(path.c_str(), "r");
  if (!f) return "";
  char buf[4096] = {};
  std::string token = fgets(buf, sizeof buf, f) ? buf : "";
  fclose(f);
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
  return token;
}

template <typename Msg>
void PrintJson(const Msg& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;  // shard 0, index 0: explicit for scripts
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  printf("%s\n", out.c_str());
}

// The connection to control and how to print.
struct Session {
  std::unique_ptr<mx::v1::Admin::Stub> stub;
  std::string server, token;
  bool json = false;
  std::chrono::seconds timeout{15};  // --timeout: how long a command may take

  // A call's context: the deadline (--timeout, or `at_least` if longer) and
  // the bearer token.
  std::unique_ptr<grpc::ClientContext> Context(std::chrono::seconds at_least = std::chrono::seconds(0)) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::max(timeout, at_least));
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }
  int Fail(const grpc::Status& st) const {
    fprintf(stderr, "mxctl: %s: %s (%d)\n", server.c_str(), st.error_message().c_str(),
            static_cast<int>(st.error_code()));
    const auto code = st.error_code();
    if (code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED) return kExNoPerm;
    if (code == grpc::StatusCode::INVALID_ARGUMENT) return kExDataErr;
    return kExUnavailable;
  }
  // The answer as JSON, or as text by format.h's printer.
  template <typename Resp>
  int Show(const grpc::Status& st, const Resp& resp, std::string (*text)(const Resp&)) const {
    if (!st.ok()) return Fail(st);
    if (json) {
      PrintJson(resp);
    } else {
      fputs(text(resp).c_str(), stdout);
    }
    return Partial(resp);
  }
  // The answer as JSON, or as the text line(s) given.
  template <typename Resp>
  int Say(const grpc::Status& st, const Resp& resp, const std::string& text) const {
    if (!st.ok()) return Fail(st);
    if (json) {
      PrintJson(resp);
    } else {
      fputs(text.c_str(), stdout);
    }
    return Partial(resp);
  }
  // A fan-out that some shards did not answer: named on stderr, kExPartial.
  template <typename Resp>
  static int Partial(const Resp& resp) {
    if constexpr (requires { resp.failed_shards(); }) {
      if (!resp.failed_shards().empty()) {
        fprintf(stderr, "mxctl: %s", mx::control::FormatPartial(resp.failed_shards()).c_str());
        return kExPartial;
      }
    }
    return 0;
  }
};

using Args = std::vector<std::string>;  // the operands after the command's name

struct Command {
  const char* name;      // one or two words
  const char* synopsis;  // its operands
  const char* help;      // lines separated by \n
  const char* role;      // what the token needs (control.admin_tokens_file): read | operator
  const char* rpc;       // the Admin method it calls
  int (*run)(Session& s, const Args& args);
};

int Usage();

std::string Printf(const char* fmt, unsigned long long a, unsigned long long b = 0, unsigned long long c = 0) {
  char buf[256];
  snprintf(buf, sizeof buf, fmt, a, b, c);
  return buf;
}

// -I qid, -S sender, -R recipient, -D domain (also -Iqid; -qI as sendmail).
bool ParseFilter(const Args& args, bool allow_domain, mx::v1::QueueRunRequest* f) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const size_t skip = a.rfind("-q", 0) == 0 ? 3 : 2;
    if (a.size() < 2 || a[0] != '-' || a.size() < skip) return false;
    std::string v = a.size() > skip ? a.substr(skip) : (i + 1 < args.size() ? args[++i] : "");
    if (v.empty()) return false;
    switch (a[skip - 1]) {
      case 'I': f->set_qid(v); break;
      case 'S': f->set_sender(v); break;
      case 'R': f->set_recipient(v); break;
      case 'D':
        if (!allow_domain) return false;
        f->set_domain(v);
        break;
      default: return false;
    }
  }
  return true;
}

std::string Joined(const Args& args, size_t from) {
  std::string out;
  for (size_t k = from; k < args.size(); ++k) out += (out.empty() ? "" : " ") + args[k];
  return out;
}

int Mailq(Session& s, const Args& args) {
  mx::v1::QueueRunRequest f;
  if (!ParseFilter(args, false, &f)) return Usage();
  mx::v1::MailqRequest req;
  req.set_qid(f.qid());
  req.set_sender(f.sender());
  req.set_recipient(f.recipient());
  mx::v1::MailqResponse resp;
  return s.Show(s.stub->Mailq(s.Context().get(), req, &resp), resp, &mx::control::FormatMailq);
}

int Mailstats(Session& s, const Args& args) {
  mx::v1::MailstatsRequest req;
  if (args.size() > 1 || (args.size() == 1 && args[0] != "--reset" && args[0] != "-p")) return Usage();
  req.set_reset(!args.empty());
  mx::v1::MailstatsResponse resp;
  return s.Show(s.stub->Mailstats(s.Context().get(), req, &resp), resp, &mx::control::FormatMailstats);
}

int Inspect(Session& s, const Args& args) {
  if (args.size() != 1) return Usage();
  mx::v1::InspectRequest req;
  req.set_qid(args[0]);
  mx::v1::InspectResponse resp;
  return s.Show(s.stub->Inspect(s.Context().get(), req, &resp), resp, &mx::control::FormatInspect);
}

int Hoststat(Session& s, const Args& args) {
  if (!args.empty()) return Usage();
  mx::v1::HostStatusResponse resp;
  return s.Show(s.stub->HostStatus(s.Context().get(), mx::v1::HostStatusRequest(), &resp), resp,
                &mx::control::FormatHostStatus);
}

int Purgestat(Session& s, const Args& args) {
  if (args.size() > 1) return Usage();
  mx::v1::PurgeHostStatusRequest req;
  if (!args.empty()) req.set_host(args[0]);
  mx::v1::PurgeStatResponse resp;
  auto st = s.stub->PurgeHostStatus(s.Context().get(), req, &resp);
  const unsigned long long n = resp.purged();
  return s.Say(st, resp, std::to_string(n) + " host status entr" + (n == 1 ? "y" : "ies") + " purged\n");
}

int SuspendOrResume(Session& s, const Args& args, bool resume) {
  if (resume ? args.size() != 1 : args.size() < 2) return Usage();
  mx::v1::SiteSuspendRequest req;
  req.set_site(args[0]);
  req.set_resume(resume);
  if (!resume) {
    auto seconds = ParseSeconds(args[1]);
    if (!seconds) {
      fprintf(stderr, "mxctl: suspend: '%s' is not a duration (30s, 15m, 2h, 1d)\n", args[1].c_str());
      return kExUsage;
    }
    req.set_duration_s(*seconds);
    req.set_reason(Joined(args, 2));
  }
  mx::v1::SiteSuspendResponse resp;
  auto st = s.stub->SiteSuspend(s.Context().get(), req, &resp);
  return s.Say(st, resp,
               resume ? args[0] +
                            ": resumed (messages put back meanwhile come back within minutes; mxctl qrun for at "
                            "once)\n"
                      : args[0] + ": suspended for " + args[1] + ", cluster-wide within seconds\n");
}
int Suspend(Session& s, const Args& args) {
  return SuspendOrResume(s, args, false);
}
int Resume(Session& s, const Args& args) {
  return SuspendOrResume(s, args, true);
}

int Sites(Session& s, const Args& args) {
  if (!args.empty()) return Usage();
  mx::v1::SitesResponse resp;
  return s.Show(s.stub->Sites(s.Context().get(), mx::v1::SitesRequest(), &resp), resp, &mx::control::FormatSites);
}

int SuppressOrNot(Session& s, const Args& args, bool add) {
  if (add ? args.empty() : args.size() != 1) return Usage();
  mx::v1::SuppressAdminRequest req;
  if (add) {
    req.add_add(args[0]);
    req.set_reason(Joined(args, 1));
  } else {
    req.add_remove(args[0]);
  }
  mx::v1::SuppressAdminResponse resp;
  auto st = s.stub->Suppress(s.Context().get(), req, &resp);
  const char* what =
      add ? (resp.added() ? "suppressed (every ingress refuses it within seconds)" : "was already suppressed")
          : (resp.removed() ? "no longer suppressed" : "was not suppressed");
  return s.Say(st, resp, args[0] + ": " + what + "\n");
}
int Suppress(Session& s, const Args& args) {
  return SuppressOrNot(s, args, true);
}
int Unsuppress(Session& s, const Args& args) {
  return SuppressOrNot(s, args, false);
}

int Suppressions(Session& s, const Args& args) {
  if (args.size() > 1) return Usage();
  mx::v1::SuppressionsRequest req;
  if (!args.empty()) req.set_address(args[0]);
  mx::v1::SuppressionsResponse resp;
  const int rc = s.Show(s.stub->Suppressions(s.Context().get(), req, &resp), resp, &mx::control::FormatSuppressions);
  if (rc != 0) return rc;
  return req.address().empty() || resp.entries_size() > 0 ? 0 : 1;  // one address: listed or not
}

int Manage(Session& s, const Args& args, mx::v1::ManageOp::Action action, const char* name) {
  mx::v1::QueueRunRequest f;
  if (!ParseFilter(args, true, &f)) return Usage();
  const bool no_filter = f.qid().empty() && f.sender().empty() && f.recipient().empty() && f.domain().empty();
  if (no_filter && (action == mx::v1::ManageOp::MANAGE_DELETE || action == mx::v1::ManageOp::MANAGE_BOUNCE)) {
    fprintf(stderr, "mxctl: %s needs a filter (-I, -S, -R or -D)\n", name);
    return kExUsage;
  }
  mx::v1::ManageQueueRequest req;
  req.set_action(action);
  *req.mutable_filter() = f;
  mx::v1::ManageQueueResponse resp;
  auto st = s.stub->Manage(s.Context().get(), req, &resp);
  std::string text;
  switch (action) {
    case mx::v1::ManageOp::MANAGE_DELETE:
      text = Printf("%llu message(s) deleted (%llu recipients), %llu in delivery left alone\n", resp.messages(),
                    resp.recipients(), resp.skipped());
      break;
    case mx::v1::ManageOp::MANAGE_BOUNCE:
      text = Printf("%llu recipient(s) to be returned to their senders, %llu in delivery left alone\n",
                    resp.recipients(), resp.skipped());
      break;
    default:
      text = Printf("%llu recipient(s) ", resp.recipients()) +
             (action == mx::v1::ManageOp::MANAGE_HOLD ? "held\n" : "released\n");
  }
  return s.Say(st, resp, text);
}
int Hold(Session& s, const Args& a) {
  return Manage(s, a, mx::v1::ManageOp::MANAGE_HOLD, "hold");
}
int Release(Session& s, const Args& a) {
  return Manage(s, a, mx::v1::ManageOp::MANAGE_RELEASE, "release");
}
int Delete(Session& s, const Args& a) {
  return Manage(s, a, mx::v1::ManageOp::MANAGE_DELETE, "delete");
}
int Bounce(Session& s, const Args& a) {
  return Manage(s, a, mx::v1::ManageOp::MANAGE_BOUNCE, "bounce");
}

int Qrun(Session& s, const Args& args) {
  mx::v1::QueueRunRequest req;
  if (!ParseFilter(args, true, &req)) return Usage();
  mx::v1::QueueRunResponse resp;
  auto st = s.stub->QueueRun(s.Context().get(), req, &resp);
  return s.Say(st, resp, Printf("%llu recipient(s) ready for delivery\n", resp.made_ready()));
}

int ClusterStatus(Session& s, const Args& args) {
  if (!args.empty()) return Usage();
  mx::v1::ClusterStatusResponse resp;
  return s.Show(s.stub->ClusterStatus(s.Context().get(), mx::v1::ClusterStatusRequest(), &resp), resp,
                &mx::control::FormatClusterStatus);
}

int DrainOrNot(Session& s, const Args& args, bool undrain, bool forget) {
  if (args.size() != 1) return Usage();
  mx::v1::DrainRequest req;
  req.set_name(args[0]);
  req.set_undrain(undrain);
  req.set_forget(forget);
  mx::v1::DrainResponse resp;
  auto st = s.stub->Drain(s.Context().get(), req, &resp);
  const char* what = forget    ? "forgotten"
                     : undrain ? "back to work"
                               : "draining (see mxctl cluster status: drained when nothing is in flight)";
  return s.Say(st, resp, args[0] + ": " + what + "\n");
}
int Drain(Session& s, const Args& a) {
  return DrainOrNot(s, a, false, false);
}
int Undrain(Session& s, const Args& a) {
  return DrainOrNot(s, a, true, false);
}
int Forget(Session& s, const Args& a) {
  return DrainOrNot(s, a, false, true);
}

bool Number(const std::string& text, uint64_t* out) {
  char* end = nullptr;
  *out = strtoull(text.c_str(), &end, 10);
  return !text.empty() && end && *end == '\0';
}

// The shards a membership change applies to: --shard N, or every shard.
std::optional<std::vector<uint32_t>> Shards(Session& s, const std::string& shard, int* rc) {
  std::vector<uint32_t> shards;
  if (shard != "all") {
    uint64_t n = 0;
    if (!Number(shard, &n) || n > 255) {
      *rc = Usage();
      return std::nullopt;
    }
    shards.push_back(static_cast<uint32_t>(n));
    return shards;
  }
  mx::v1::ClusterStatusResponse status;
  if (auto st = s.stub->ClusterStatus(s.Context().get(), mx::v1::ClusterStatusRequest(), &status); !st.ok()) {
    *rc = s.Fail(st);
    return std::nullopt;
  }
  for (uint32_t n = 0; n < status.shards(); ++n) shards.push_back(n);
  if (status.shard_map_size() > 0) {  // the shard map: every shard but the retired
    shards.clear();
    for (const auto& info : status.shard_map()) {
      if (info.state() != mx::v1::ShardInfo::SHARD_RETIRED) shards.push_back(info.shard());
    }
  }
  return shards;
}

int Membership(Session& s, const Args& args, bool add) {
  std::string shard = "all", id, grpc_addr, raft_addr;
  for (size_t i = 0; i < args.size(); ++i) {
    if (i + 1 >= args.size()) return Usage();
    const std::string& flag = args[i];
    const std::string& v = args[++i];
    if (flag == "--shard") {
      shard = v;
    } else if (flag == "--id" || flag == "--node") {
      id = v;
    } else if (flag == "--grpc" && add) {
      grpc_addr = v;
    } else if (flag == "--raft" && add) {
      raft_addr = v;
    } else {
      return Usage();
    }
  }
  uint64_t node = 0;
  if (!Number(id, &node) || node == 0) return Usage();
  // --raft is the replica's queue.peers raft address (shard 0's); shard s
  // listens on its port + s, as every node computes it.
  mx::HostPort raft_base;
  if (add) {
    if (grpc_addr.empty() || raft_addr.empty()) return Usage();
    auto hp = mx::ParseHostPort(raft_addr);
    if (!hp.ok()) {
      fprintf(stderr, "mxctl: --raft: %s\n", hp.status().message().c_str());
      return kExUsage;
    }
    raft_base = *hp;
  }
  int rc = 0;
  auto shards = Shards(s, shard, &rc);
  if (!shards) return rc;
  for (uint32_t n : *shards) {
    grpc::Status st;
    auto ctx = s.Context(std::chrono::minutes(3));
    if (add) {
      if (raft_base.port + n > 65535) {
        fprintf(stderr, "mxctl: --raft: port %u + shard %u is past 65535\n", raft_base.port, n);
        return kExUsage;
      }
      mx::v1::AddReplicaRequest req;
      req.set_shard(n);
      req.set_node_id(node);
      req.set_grpc_address(grpc_addr);
      req.set_raft_address(mx::HostPort{raft_base.host, static_cast<uint16_t>(raft_base.port + n)}.ToString());
      mx::v1::AddReplicaResponse resp;
      st = s.stub->AddReplica(ctx.get(), req, &resp);
    } else {
      mx::v1::RemoveReplicaRequest req;
      req.set_shard(n);
      req.set_node_id(node);
      mx::v1::RemoveReplicaResponse resp;
      st = s.stub->RemoveReplica(ctx.get(), req, &resp);
    }
    if (!st.ok()) return s.Fail(st);
    printf("shard %u: %s node %llu\n", n, add ? "added" : "removed", static_cast<unsigned long long>(node));
    fflush(stdout);
  }
  return 0;
}
// cluster transfer-leader --shard N [--node ID]
int TransferLeader(Session& s, const Args& args) {
  uint64_t shard = 0, node = 0;
  bool have_shard = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (i + 1 >= args.size()) return Usage();
    const std::string& flag = args[i];
    const std::string& v = args[++i];
    if (flag == "--shard") {
      if (!Number(v, &shard) || shard > 255) return Usage();
      have_shard = true;
    } else if (flag == "--node" || flag == "--id") {
      if (!Number(v, &node) || node == 0) return Usage();
    } else {
      return Usage();
    }
  }
  if (!have_shard) return Usage();
  mx::v1::TransferLeaderRequest req;
  req.set_shard(static_cast<uint32_t>(shard));
  req.set_node_id(node);
  mx::v1::TransferLeaderResponse resp;
  auto st = s.stub->TransferLeader(s.Context(std::chrono::minutes(1)).get(), req, &resp);
  return s.Say(st, resp,
               Printf("shard %llu: node %llu leads", shard, resp.leader_id()) +
                   (resp.leader_address().empty() ? "" : " (" + resp.leader_address() + ")") + "\n");
}

// cluster add-shard [--nodes ID,ID,...]
int AddShard(Session& s, const Args& args) {
  mx::v1::AddShardRequest req;
  if (!args.empty()) {
    if (args.size() != 2 || args[0] != "--nodes") return Usage();
    size_t start = 0;
    for (;;) {
      const size_t comma = args[1].find(',', start);
      uint64_t id = 0;
      if (!Number(args[1].substr(start, comma - start), &id) || id == 0) return Usage();
      req.add_replicas(id);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  mx::v1::AddShardResponse resp;
  auto st = s.stub->AddShard(s.Context(std::chrono::seconds(80)).get(), req, &resp);
  std::string nodes;
  for (uint64_t n : resp.info().replicas()) nodes += (nodes.empty() ? "" : ",") + std::to_string(n);
  const bool active = resp.info().state() == mx::v1::ShardInfo::SHARD_ACTIVE;
  return s.Say(
      st, resp,
      "shard " + std::to_string(resp.info().shard()) + " on nodes " + nodes + ": " +
          (active ? "active, ingress places new mail on it within seconds\n"
                  : "still creating (its replicas have not elected a leader yet; see mxctl cluster status)\n"));
}

// cluster drain-shard N [--move]
int DrainShard(Session& s, const Args& args) {
  if (args.empty() || args.size() > 2 || (args.size() == 2 && args[1] != "--move")) return Usage();
  uint64_t shard = 0;
  if (!Number(args[0], &shard) || shard > 255) return Usage();
  mx::v1::DrainShardRequest req;
  req.set_shard(static_cast<uint32_t>(shard));
  req.set_move(args.size() == 2);
  mx::v1::DrainShardResponse resp;
  auto st = s.stub->DrainShard(s.Context().get(), req, &resp);
  return s.Say(st, resp,
               "shard " + std::to_string(shard) + " draining: no new mail; " +
                   (resp.info().move() ? "its messages move to the active shards"
                                       : "what it holds is delivered (or bounced) as usual") +
                   ", then it retires (mxctl cluster status)\n");
}

int AddReplica(Session& s, const Args& a) {
  return Membership(s, a, true);
}
int RemoveReplica(Session& s, const Args& a) {
  return Membership(s, a, false);
}

int PolicyApply(Session& s, const Args& args) {
  if (args.size() != 2 || args[0] != "--config") return Usage();
  mx::v1::PolicyApplyRequest req;
  if (int rc = BuildBundle(args[1], req.mutable_bundle()); rc != 0) return rc;
  mx::v1::PolicyApplyResponse resp;
  auto st = s.stub->PolicyApply(s.Context().get(), req, &resp);
  return s.Say(st, resp,
               "policy " + resp.version() + " applied: " + resp.description() +
                   "\nevery node swaps to it within seconds (mxctl policy show)\n");
}

int PolicyShow(Session& s, const Args& args) {
  if (!args.empty()) return Usage();
  mx::v1::PolicyShowResponse resp;
  return s.Show(s.stub->PolicyShow(s.Context().get(), mx::v1::PolicyShowRequest(), &resp), resp,
                &mx::control::FormatPolicyShow);
}

int PolicyTest(Session& s, const Args& args) {
  mx::v1::PolicyTestRequest req;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--auth") {
      req.set_authenticated(true);
      continue;
    }
    if (i + 1 >= args.size()) return Usage();
    const std::string& v = args[++i];
    if (a == "--client-ip") {
      req.set_client_ip(v);
    } else if (a == "--client-name") {
      req.set_client_name(v);
    } else if (a == "--helo") {
      req.set_helo(v);
    } else if (a == "--from") {
      req.set_sender(v == "<>" ? "" : v);
    } else if (a == "--to") {
      req.add_recipients(v);
    } else if (a == "--header") {
      req.add_headers(v);
    } else {
      return Usage();
    }
  }
  if (req.client_ip().empty() || req.recipients().empty()) return Usage();
  mx::v1::PolicyTestResponse resp;
  const int rc = s.Show(s.stub->PolicyTest(s.Context().get(), req, &resp), resp, &mx::control::FormatPolicyTest);
  if (rc != 0) return rc;
  return resp.outcome() == "accept" ? 0 : resp.outcome() == "reject" ? 1 : 2;
}

const Command kCommands[] = {
    {"mailq", "[-I qid] [-S sender] [-R recipient]", "list queued messages", "read", "Mailq", Mailq},
    {"mailstats", "[--reset]", "per-mailer statistics (--reset, like -p: then clear; operator)", "read", "Mailstats",
     Mailstats},
    {"inspect", "QID", "one message: envelope, recipients, headers", "read", "Inspect", Inspect},
    {"hoststat", "", "MX host status (cluster-wide)", "read", "HostStatus", Hoststat},
    {"purgestat", "[HOST]", "forget host status (all, or one host)", "operator", "PurgeHostStatus", Purgestat},
    {"suspend", "SITE DURATION [REASON...]",
     "no delivery to a site (its name in the delivery log's\nsite= or a shaping rule) for DURATION (30m, 2h, ...)",
     "operator", "SiteSuspend", Suspend},
    {"resume", "SITE", "lift a suspension (or a reply rule's slowing)", "operator", "SiteSuspend", Resume},
    {"sites", "", "the sites suspended or slowed now", "read", "Sites", Sites},
    {"suppress", "ADDRESS [REASON...]", "refuse RCPT to ADDRESS at every ingress (550 5.1.1)", "operator", "Suppress",
     Suppress},
    {"unsuppress", "ADDRESS", "take ADDRESS off the suppression list", "operator", "Suppress", Unsuppress},
    {"suppressions", "[ADDRESS]", "the suppression list (newest first), or one address\n(exit 1: not listed)", "read",
     "Suppressions", Suppressions},
    {"hold", "[-I qid] [-S sender] [-R recipient] [-D domain]", "hold matching recipients", "operator", "Manage", Hold},
    {"release", "[-I qid] [-S sender] [-R recipient] [-D domain]", "release matching held recipients", "operator",
     "Manage", Release},
    {"delete", "-I qid | -S sender | -R recipient | -D domain", "delete matching messages (not while in delivery)",
     "operator", "Manage", Delete},
    {"bounce", "-I qid | -S sender | -R recipient | -D domain", "bounce matching recipients to their sender (DSN)",
     "operator", "Manage", Bounce},
    {"qrun", "[-I qid] [-S sender] [-R recipient] [-D domain]", "deferred recipients that match: ready now", "operator",
     "QueueRun", Qrun},
    {"cluster status", "",
     "every shard's replicas (leader, term, indexes, lag)\nand every mxd process (roles, state, load)", "read",
     "ClusterStatus", ClusterStatus},
    {"drain", "NODE", "take a process out of service (ingress 421s, delivery\nfinishes its leases and pulls no more)",
     "operator", "Drain", Drain},
    {"undrain", "NODE", "put a drained process back in service", "operator", "Drain", Undrain},
    {"forget", "NODE", "drop a process that is gone from cluster status", "operator", "Drain", Forget},
    {"cluster add-replica", "[--shard N|all] --node ID --grpc HOST:PORT --raft HOST:PORT",
     "add a queue node as a voter of every shard (or shard N)\nonce it caught up; --raft is its queue.peers raft\n"
     "address (shard 0's; shard s is at port + s); refused\nwhile it is unreachable",
     "operator", "AddReplica", AddReplica},
    {"cluster remove-replica", "[--shard N|all] --node ID",
     "remove a replica from every shard (or shard N); refused\nwhen the voters left could not make a quorum",
     "operator", "RemoveReplica", RemoveReplica},
    {"cluster transfer-leader", "--shard N [--node ID]",
     "hand shard N's leadership to node ID (default: the\nvoter with the most entries), its preferred leader now",
     "operator", "TransferLeader", TransferLeader},
    {"cluster add-shard", "[--nodes ID,ID,...]",
     "a new shard (a Raft group) on the given queue nodes (default:\nthe configured peers); ingress places mail on it "
     "once\n"
     "it has a leader; the node ids must be in every queue node's\nqueue.peers",
     "operator", "AddShard", AddShard},
    {"cluster drain-shard", "N [--move]",
     "no new mail on shard N; it retires once what it holds is\ndelivered, or with --move re-enqueued on the "
     "active shards\n(queue ids, recipients' state and attempts intact)",
     "operator", "DrainShard", DrainShard},
    {"queue add-replica", "(as cluster add-replica; --id for --node)", "the older name of cluster add-replica",
     "operator", "AddReplica", AddReplica},
    {"queue remove-replica", "(as cluster remove-replica)", "the older name of cluster remove-replica", "operator",
     "RemoveReplica", RemoveReplica},
    {"policy apply", "--config FILE", "push mx.yaml's ingress policy and its maps to every node", "operator",
     "PolicyApply", PolicyApply},
    {"policy show", "", "the cluster's policy version and what each node runs", "read", "PolicyShow", PolicyShow},
    {"policy test",
     "--client-ip IP [--client-name NAME] [--helo NAME] [--from ADDR]\n--to ADDR [--to ADDR...] [--header 'Name: "
     "value'...] [--auth]",
     "run the acceptance policy without sending mail;\nexit 0 accept, 1 reject, 2 discard", "read", "PolicyTest",
     PolicyTest},
};

// Lines of text split at \n.
std::vector<std::string> Lines(const char* text) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* p = text; *p; ++p) {
    if (*p == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += *p;
    }
  }
  out.push_back(cur);
  return out;
}

int Usage() {
  fprintf(stderr,
          "usage: mxctl [--server host:port] [--token-file F] [--tls-ca F [--tls-cert F --tls-key F]]\n"
          "             [--timeout DURATION] [-o text|json] COMMAND [options]\n"
          "commands (the token's role in brackets; Admin RPC after it):\n");
  constexpr size_t kColumn = 48;
  for (const Command& c : kCommands) {
    std::vector<std::string> synopsis = Lines(c.synopsis);
    std::string first = "  " + std::string(c.name) + (synopsis[0].empty() ? "" : " " + synopsis[0]);
    for (size_t k = 1; k < synopsis.size(); ++k) {
      fprintf(stderr, "%s\n", first.c_str());
      first = std::string(strlen(c.name) + 3, ' ') + synopsis[k];
    }
    std::vector<std::string> help = Lines(c.help);
    help.back() += std::string(" [") + c.role + ", " + c.rpc + "]";
    if (first.size() + 1 > kColumn) {
      fprintf(stderr, "%s\n", first.c_str());
      first.clear();
    }
    for (const auto& line : help) {
      fprintf(stderr, "%-*s%s\n", static_cast<int>(kColumn), first.c_str(), line.c_str());
      first.clear();
    }
  }
  fprintf(stderr,
          "The server defaults to $MXCTL_SERVER or 127.0.0.1:7401; the token file to $MXCTL_TOKEN_FILE\n"
          "(first line: the bearer token); --tls-ca (or $MXCTL_TLS_CA) turns TLS on.\n"
          "--timeout (default 15s): queue commands answer by then with what the shards that\n"
          "answered said, name the others on stderr and exit 75; exit 69 when none answered.\n");
  return kExUsage;
}

// The command args[i..] names (two words before one), or null.
const Command* Find(const std::vector<std::string>& args, size_t* i) {
  for (const Command& c : kCommands) {
    const std::string name = c.name;
    const auto space = name.find(' ');
    if (space == std::string::npos) {
      if (args[*i] != name) continue;
      *i += 1;
      return &c;
    }
    if (*i + 1 < args.size() && args[*i] == name.substr(0, space) && args[*i + 1] == name.substr(space + 1)) {
      *i += 2;
      return &c;
    }
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  // Read before any gRPC thread starts.
  const char* env = getenv("MXCTL_SERVER");  // NOLINT(concurrency-mt-unsafe)
  Session s;
  s.server = env ? env : "127.0.0.1:7401";
  std::string output = "text";
  const char* token_env = getenv("MXCTL_TOKEN_FILE");  // NOLINT(concurrency-mt-unsafe)
  std::string token_file = token_env ? token_env : "";
  const char* ca_env = getenv("MXCTL_TLS_CA");  // NOLINT(concurrency-mt-unsafe)
  mx::GrpcClientTls tls{ca_env ? ca_env : "", "", ""};
  std::vector<std::string> args(argv + 1, argv + argc);
  size_t i = 0;
  for (; i + 1 < args.size() && args[i].rfind('-', 0) == 0; i += 2) {
    const std::string& flag = args[i];
    const std::string& v = args[i + 1];
    if (flag == "--server") {
      s.server = v;
    } else if (flag == "-o") {
      output = v;
    } else if (flag == "--token-file") {
      token_file = v;
    } else if (flag == "--tls-ca") {
      tls.ca_file = v;
    } else if (flag == "--tls-cert") {
      tls.cert_file = v;
    } else if (flag == "--tls-key") {
      tls.key_file = v;
    } else if (flag == "--timeout") {
      auto seconds = ParseSeconds(v);
      if (!seconds) {
        fprintf(stderr, "mxctl: --timeout: '%s' is not a duration (5s, 30s, 2m)\n", v.c_str());
        return kExUsage;
      }
      s.timeout = std::chrono::seconds(*seconds);
    } else {
      break;
    }
  }
  if (i >= args.size() || (output != "text" && output != "json")) return Usage();
  if (tls.cert_file.empty() != tls.key_file.empty()) return Usage();
  const Command* cmd = Find(args, &i);
  if (!cmd) return Usage();
  s.json = output == "json";
  std::shared_ptr<grpc::Channel> channel;
  if (tls.ca_file.empty() && tls.cert_file.empty()) {
    channel = mx::MakeChannel(s.server);
  } else {
    auto c = mx::MakeTlsChannel(s.server, tls);
    if (!c.ok()) {
      fprintf(stderr, "mxctl: %s\n", c.status().message().c_str());
      return kExNoInput;
    }
    channel = std::move(c).value();
  }
  s.stub = mx::v1::Admin::NewStub(channel);
  if (!token_file.empty()) {
    s.token = ReadToken(token_file);
    if (s.token.empty()) {
      fprintf(stderr, "mxctl: cannot read a token from %s\n", token_file.c_str());
      return kExNoInput;
    }
  }
  return cmd->run(s, Args(args.begin() + static_cast<std::ptrdiff_t>(i), args.end()));
}
