// mxctl — the operator's tool: mailq, mailstats, cluster status, membership and
// policy tests against the control plane.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "mx/common/config.h"
#include "mx/common/grpc_server.h"
#include "mx/common/map_file.h"
#include "mx/common/yaml_reader.h"
#include "mx/control/format.h"
#include "mx/v1/control.grpc.pb.h"

namespace {

int Usage() {
  fprintf(stderr,
          "usage: mxctl [--server host:port] [--token-file F] [--tls-ca F [--tls-cert F --tls-key F]]\n"
          "             [-o text|json] COMMAND [options]\n"
          "commands:\n"
          "  mailq [-I qid] [-S sender] [-R recipient]   list queued messages\n"
          "  mailstats [--reset]                         per-mailer statistics (--reset, like -p: then clear)\n"
          "  inspect QID                                 one message: envelope, recipients, headers\n"
          "  hoststat                                    MX host status (cluster-wide)\n"
          "  purgestat [HOST]                            forget host status (all, or one host)\n"
          "  suspend SITE DURATION [REASON...]           no delivery to a site (its name in the delivery log's\n"
          "                                              site= or a shaping rule) for DURATION (30m, 2h, ...)\n"
          "  resume SITE                                 lift a suspension (or a reply rule's slowing)\n"
          "  sites                                       the sites suspended or slowed now\n"
          "  suppress ADDRESS [REASON...]                refuse RCPT to ADDRESS at every ingress (550 5.1.1)\n"
          "  unsuppress ADDRESS                          take ADDRESS off the suppression list\n"
          "  suppressions [ADDRESS]                      the suppression list (newest first), or one address\n"
          "  hold|release|delete|bounce [-I qid] [-S sender] [-R recipient] [-D domain]\n"
          "                                              hold or release matching recipients, delete\n"
          "                                              matching messages (not while in delivery),\n"
          "                                              bounce matching recipients to their sender (DSN)\n"
          "  qrun [-I qid] [-S sender] [-R recipient] [-D domain]\n"
          "                                              deferred recipients that match: ready now\n"
          "  cluster status                              every shard's replicas (leader, term, indexes, lag)\n"
          "                                              and every mxd process (roles, state, load)\n"
          "  drain|undrain NODE                          take a process out of service (ingress 421s, delivery\n"
          "                                              finishes its leases and pulls no more) or back in\n"
          "  forget NODE                                 drop a process that is gone from cluster status\n"
          "  queue add-replica [--shard N|all] --id ID --grpc HOST:PORT --raft HOST:PORT\n"
          "                                              add a queue replica to every shard's Raft group (or\n"
          "                                              shard N's); --raft is its queue.peers raft address\n"
          "                                              (shard 0's; shard s is at port + s)\n"
          "  queue remove-replica [--shard N|all] --id ID\n"
          "                                              remove a replica from every shard (or shard N)\n"
          "  policy apply --config FILE                  push mx.yaml's ingress policy and its maps to every node\n"
          "  policy show                                 the cluster's policy version and what each node runs\n"
          "  policy test --client-ip IP [--client-name NAME] [--helo NAME] [--from ADDR]\n"
          "              --to ADDR [--to ADDR...] [--header 'Name: value'...] [--auth]\n"
          "                                              run the acceptance policy without sending mail;\n"
          "                                              exit 0 accept, 1 reject, 2 discard\n"
          "The server defaults to $MXCTL_SERVER or 127.0.0.1:7401; the token file to $MXCTL_TOKEN_FILE\n"
          "(first line: the bearer token); --tls-ca (or $MXCTL_TLS_CA) turns TLS on.\n");
  return 64;  // EX_USAGE
}

int Fail(const grpc::Status& st, const std::string& server) {
  fprintf(stderr, "mxctl: %s: %s (%d)\n", server.c_str(), st.error_message().c_str(),
          static_cast<int>(st.error_code()));
  const auto code = st.error_code();
  if (code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::PERMISSION_DENIED) return 77;  // EX_NOPERM
  if (code == grpc::StatusCode::INVALID_ARGUMENT) return 65;  // EX_DATAERR
  return 69;                                                  // EX_UNAVAILABLE
}

// mxctl policy apply --config FILE: mx.yaml and the map files its ingress
// section names (relative to FILE's directory), as one bundle.
int BuildBundle(const std::string& path, mx::v1::PolicyBundle* bundle) {
  auto yaml = mx::ReadMapFile(path);
  if (!yaml.ok()) {
    fprintf(stderr, "mxctl: cannot read %s\n", path.c_str());
    return 66;  // EX_NOINPUT
  }
  auto cfg = mx::ParseConfig(*yaml);
  if (!cfg.ok()) {
    fprintf(stderr, "mxctl: %s: %s\n", path.c_str(), cfg.status().message().c_str());
    return 65;  // EX_DATAERR
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
      return 66;
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

}  // namespace

int main(int argc, char** argv) {
  const char* env = getenv("MXCTL_SERVER");
  std::string server = env ? env : "127.0.0.1:7401";
  std::string output = "text";
  const char* token_env = getenv("MXCTL_TOKEN_FILE");
  std::string token_file = token_env ? token_env : "";
  const char* ca_env = getenv("MXCTL_TLS_CA");
  mx::GrpcClientTls tls{ca_env ? ca_env : "", "", ""};
  std::vector<std::string> args(argv + 1, argv + argc);
  size_t i = 0;
  for (; i < args.size(); ++i) {
    if (args[i] == "--server" && i + 1 < args.size())
      server = args[++i];
    else if (args[i] == "-o" && i + 1 < args.size())
      output = args[++i];
    else if (args[i] == "--token-file" && i + 1 < args.size())
      token_file = args[++i];
    else if (args[i] == "--tls-ca" && i + 1 < args.size())
      tls.ca_file = args[++i];
    else if (args[i] == "--tls-cert" && i + 1 < args.size())
      tls.cert_file = args[++i];
    else if (args[i] == "--tls-key" && i + 1 < args.size())
      tls.key_file = args[++i];
    else
      break;
  }
  if (i >= args.size() || (output != "text" && output != "json")) return Usage();
  if (tls.cert_file.empty() != tls.key_file.empty()) return Usage();
  std::string cmd = args[i++];
  std::shared_ptr<grpc::Channel> channel;
  if (tls.ca_file.empty() && tls.cert_file.empty()) {
    channel = mx::MakeChannel(server);
  } else {
    auto c = mx::MakeTlsChannel(server, tls);
    if (!c.ok()) {
      fprintf(stderr, "mxctl: %s\n", c.status().message().c_str());
      return 66;  // EX_NOINPUT
    }
    channel = std::move(c).value();
  }
  auto stub = mx::v1::Admin::NewStub(channel);
  std::string token;
  if (!token_file.empty()) {
    token = ReadToken(token_file);
    if (token.empty()) {
      fprintf(stderr, "mxctl: cannot read a token from %s\n", token_file.c_str());
      return 66;  // EX_NOINPUT
    }
  }
  // Commands that make several calls build a context per call.
  auto set_token = [&token](grpc::ClientContext* c) {
    if (!token.empty()) c->AddMetadata("authorization", "Bearer " + token);
  };
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  set_token(&ctx);

  if (cmd == "mailq") {
    mx::v1::MailqRequest req;
    for (; i < args.size(); ++i) {
      const std::string& a = args[i];
      auto value = [&](size_t skip) {
        return a.size() > skip ? a.substr(skip) : (i + 1 < args.size() ? args[++i] : "");
      };
      if (a.rfind("-I", 0) == 0 || a.rfind("-qI", 0) == 0)
        req.set_qid(value(a[1] == 'q' ? 3 : 2));
      else if (a.rfind("-S", 0) == 0 || a.rfind("-qS", 0) == 0)
        req.set_sender(value(a[1] == 'q' ? 3 : 2));
      else if (a.rfind("-R", 0) == 0 || a.rfind("-qR", 0) == 0)
        req.set_recipient(value(a[1] == 'q' ? 3 : 2));
      else
        return Usage();
    }
    mx::v1::MailqResponse resp;
    auto st = stub->Mailq(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatMailq(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "drain" || cmd == "undrain" || cmd == "forget") {
    if (i + 1 != args.size()) return Usage();
    mx::v1::DrainRequest req;
    req.set_name(args[i]);
    req.set_undrain(cmd == "undrain");
    req.set_forget(cmd == "forget");
    mx::v1::DrainResponse resp;
    auto st = stub->Drain(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    printf("%s: %s\n", args[i].c_str(),
           cmd == "drain"     ? "draining (see mxctl cluster status: drained when nothing is in flight)"
           : cmd == "undrain" ? "back to work"
                              : "forgotten");
    return 0;
  }
  if (cmd == "inspect") {
    if (i + 1 != args.size()) return Usage();
    mx::v1::InspectRequest req;
    req.set_qid(args[i]);
    mx::v1::InspectResponse resp;
    auto st = stub->Inspect(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatInspect(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "hoststat") {
    if (i != args.size()) return Usage();
    mx::v1::HostStatusResponse resp;
    auto st = stub->HostStatus(&ctx, mx::v1::HostStatusRequest(), &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatHostStatus(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "suspend" || cmd == "resume") {
    if (i >= args.size() || (cmd == "resume" && i + 1 != args.size()) || (cmd == "suspend" && i + 2 > args.size())) {
      return Usage();
    }
    mx::v1::SiteSuspendRequest req;
    req.set_site(args[i]);
    req.set_resume(cmd == "resume");
    if (cmd == "suspend") {
      auto seconds = ParseSeconds(args[i + 1]);
      if (!seconds) {
        fprintf(stderr, "mxctl: suspend: '%s' is not a duration (30s, 15m, 2h, 1d)\n", args[i + 1].c_str());
        return 64;
      }
      req.set_duration_s(*seconds);
      std::string reason;
      for (size_t k = i + 2; k < args.size(); ++k) reason += (reason.empty() ? "" : " ") + args[k];
      req.set_reason(reason);
    }
    mx::v1::SiteSuspendResponse resp;
    auto st = stub->SiteSuspend(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (cmd == "resume")
      printf("%s: resumed (messages put back meanwhile come back within minutes; mxctl qrun for at once)\n",
             args[i].c_str());
    else
      printf("%s: suspended for %s, cluster-wide within seconds\n", args[i].c_str(), args[i + 1].c_str());
    return 0;
  }
  if (cmd == "sites") {
    if (i != args.size()) return Usage();
    mx::v1::SitesResponse resp;
    auto st = stub->Sites(&ctx, mx::v1::SitesRequest(), &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatSites(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "suppress" || cmd == "unsuppress") {
    if (i >= args.size() || (cmd == "unsuppress" && i + 1 != args.size())) return Usage();
    mx::v1::SuppressAdminRequest req;
    if (cmd == "suppress") {
      req.add_add(args[i]);
      std::string reason;
      for (size_t k = i + 1; k < args.size(); ++k) reason += (reason.empty() ? "" : " ") + args[k];
      req.set_reason(reason);
    } else {
      req.add_remove(args[i]);
    }
    mx::v1::SuppressAdminResponse resp;
    auto st = stub->Suppress(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (cmd == "suppress")
      printf("%s: %s\n", args[i].c_str(),
             resp.added() ? "suppressed (every ingress refuses it within seconds)" : "was already suppressed");
    else
      printf("%s: %s\n", args[i].c_str(), resp.removed() ? "no longer suppressed" : "was not suppressed");
    return 0;
  }
  if (cmd == "suppressions") {
    if (i + 1 < args.size()) return Usage();
    mx::v1::SuppressionsRequest req;
    if (i < args.size()) req.set_address(args[i]);
    mx::v1::SuppressionsResponse resp;
    auto st = stub->Suppressions(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatSuppressions(resp).c_str(), stdout);
    return req.address().empty() || resp.entries_size() > 0 ? 0 : 1;
  }
  if (cmd == "purgestat") {
    if (i + 1 < args.size()) return Usage();
    mx::v1::PurgeHostStatusRequest req;
    if (i < args.size()) req.set_host(args[i]);
    mx::v1::PurgeHostStatusResponse resp;
    auto st = stub->PurgeHostStatus(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    printf("%llu host status entr%s purged\n", static_cast<unsigned long long>(resp.purged()),
           resp.purged() == 1 ? "y" : "ies");
    return 0;
  }
  if (cmd == "qrun" || cmd == "hold" || cmd == "release" || cmd == "delete" || cmd == "bounce") {
    mx::v1::QueueRunRequest req;
    for (; i < args.size(); ++i) {
      if (i + 1 >= args.size()) return Usage();
      const std::string& flag = args[i];
      const std::string& v = args[++i];
      if (flag == "-I")
        req.set_qid(v);
      else if (flag == "-S")
        req.set_sender(v);
      else if (flag == "-R")
        req.set_recipient(v);
      else if (flag == "-D")
        req.set_domain(v);
      else
        return Usage();
    }
    if (cmd != "qrun") {
      if (req.qid().empty() && req.sender().empty() && req.recipient().empty() && req.domain().empty() &&
          (cmd == "delete" || cmd == "bounce")) {
        fprintf(stderr, "mxctl: %s needs a filter (-I, -S, -R or -D)\n", cmd.c_str());
        return 64;
      }
      mx::v1::ManageQueueRequest m;
      m.set_action(cmd == "hold"      ? mx::v1::ManageOp::MANAGE_HOLD
                   : cmd == "release" ? mx::v1::ManageOp::MANAGE_RELEASE
                   : cmd == "bounce"  ? mx::v1::ManageOp::MANAGE_BOUNCE
                                      : mx::v1::ManageOp::MANAGE_DELETE);
      *m.mutable_filter() = req;
      mx::v1::ManageResponse resp;
      auto st = stub->Manage(&ctx, m, &resp);
      if (!st.ok()) return Fail(st, server);
      if (output == "json") {
        PrintJson(resp);
      } else if (cmd == "delete") {
        printf("%llu message(s) deleted (%llu recipients), %llu in delivery left alone\n",
               static_cast<unsigned long long>(resp.messages()), static_cast<unsigned long long>(resp.recipients()),
               static_cast<unsigned long long>(resp.skipped()));
      } else if (cmd == "bounce") {
        printf("%llu recipient(s) to be returned to their senders, %llu in delivery left alone\n",
               static_cast<unsigned long long>(resp.recipients()), static_cast<unsigned long long>(resp.skipped()));
      } else {
        printf("%llu recipient(s) %s\n", static_cast<unsigned long long>(resp.recipients()),
               cmd == "hold" ? "held" : "released");
      }
      return 0;
    }
    mx::v1::QueueRunResponse resp;
    auto st = stub->QueueRun(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      printf("%llu recipient(s) ready for delivery\n", static_cast<unsigned long long>(resp.made_ready()));
    return 0;
  }
  if (cmd == "mailstats") {
    mx::v1::MailstatsRequest req;
    if (i < args.size() && (args[i] == "--reset" || args[i] == "-p")) {
      req.set_reset(true);
      ++i;
    }
    if (i != args.size()) return Usage();
    mx::v1::MailstatsResponse resp;
    auto st = stub->Mailstats(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatMailstats(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "cluster") {
    if (i + 1 != args.size() || args[i] != "status") return Usage();
    mx::v1::ClusterStatusResponse resp;
    auto st = stub->ClusterStatus(&ctx, mx::v1::ClusterStatusRequest(), &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatClusterStatus(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "policy" && i < args.size() && args[i] == "apply") {
    if (i + 3 != args.size() || args[i + 1] != "--config") return Usage();
    mx::v1::PolicyApplyRequest req;
    if (int rc = BuildBundle(args[i + 2], req.mutable_bundle()); rc != 0) return rc;
    mx::v1::PolicyApplyResponse resp;
    auto st = stub->PolicyApply(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json") {
      PrintJson(resp);
    } else {
      printf("policy %s applied: %s\nevery node swaps to it within seconds (mxctl policy show)\n",
             resp.version().c_str(), resp.description().c_str());
    }
    return 0;
  }
  if (cmd == "policy" && i < args.size() && args[i] == "show") {
    if (i + 1 != args.size()) return Usage();
    mx::v1::PolicyShowResponse resp;
    auto st = stub->PolicyShow(&ctx, mx::v1::PolicyShowRequest(), &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatPolicyShow(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "policy") {
    if (i >= args.size() || args[i++] != "test") return Usage();
    mx::v1::PolicyTestRequest req;
    for (; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a == "--auth") {
        req.set_authenticated(true);
        continue;
      }
      if (i + 1 >= args.size()) return Usage();
      const std::string& v = args[++i];
      if (a == "--client-ip")
        req.set_client_ip(v);
      else if (a == "--client-name")
        req.set_client_name(v);
      else if (a == "--helo")
        req.set_helo(v);
      else if (a == "--from")
        req.set_sender(v == "<>" ? "" : v);
      else if (a == "--to")
        req.add_recipients(v);
      else if (a == "--header")
        req.add_headers(v);
      else
        return Usage();
    }
    if (req.client_ip().empty() || req.recipients().empty()) return Usage();
    mx::v1::PolicyTestResponse resp;
    auto st = stub->PolicyTest(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatPolicyTest(resp).c_str(), stdout);
    return resp.outcome() == "accept" ? 0 : resp.outcome() == "reject" ? 1 : 2;
  }
  if (cmd == "queue") {
    if (i >= args.size()) return Usage();
    std::string sub = args[i++];
    if (sub != "add-replica" && sub != "remove-replica") return Usage();
    std::string shard = "all", id, grpc_addr, raft_addr;
    for (; i < args.size(); ++i) {
      if (i + 1 >= args.size()) return Usage();
      if (args[i] == "--shard")
        shard = args[++i];
      else if (args[i] == "--id")
        id = args[++i];
      else if (args[i] == "--grpc")
        grpc_addr = args[++i];
      else if (args[i] == "--raft")
        raft_addr = args[++i];
      else
        return Usage();
    }
    auto number = [](const std::string& s, uint64_t* out) {
      char* end = nullptr;
      *out = strtoull(s.c_str(), &end, 10);
      return !s.empty() && end && *end == '\0';
    };
    uint64_t id_n = 0;
    if (!number(id, &id_n) || id_n == 0) return Usage();
    // --raft is the replica's queue.peers raft address (shard 0's); shard s
    // listens on its port + s, as every node computes it.
    mx::HostPort raft_base;
    if (sub == "add-replica") {
      if (grpc_addr.empty() || raft_addr.empty()) return Usage();
      auto hp = mx::ParseHostPort(raft_addr);
      if (!hp.ok()) {
        fprintf(stderr, "mxctl: --raft: %s\n", hp.status().message().c_str());
        return 64;
      }
      raft_base = *hp;
    }
    std::vector<uint32_t> shards;
    if (shard == "all") {
      grpc::ClientContext sctx;
      sctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      set_token(&sctx);
      mx::v1::ClusterStatusResponse status;
      if (auto st = stub->ClusterStatus(&sctx, mx::v1::ClusterStatusRequest(), &status); !st.ok()) {
        return Fail(st, server);
      }
      for (uint32_t s = 0; s < status.shards(); ++s) shards.push_back(s);
    } else {
      uint64_t n = 0;
      if (!number(shard, &n) || n > 255) return Usage();
      shards.push_back(static_cast<uint32_t>(n));
    }
    for (uint32_t s : shards) {
      grpc::ClientContext cctx;
      cctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(3));
      set_token(&cctx);
      grpc::Status st;
      if (sub == "add-replica") {
        if (raft_base.port + s > 65535) {
          fprintf(stderr, "mxctl: --raft: port %u + shard %u is past 65535\n", raft_base.port, s);
          return 64;
        }
        mx::HostPort at{raft_base.host, static_cast<uint16_t>(raft_base.port + s)};
        mx::v1::AddReplicaRequest req;
        req.set_shard(s);
        req.set_node_id(id_n);
        req.set_grpc_address(grpc_addr);
        req.set_raft_address(at.ToString());
        mx::v1::AddReplicaResponse resp;
        st = stub->AddReplica(&cctx, req, &resp);
      } else {
        mx::v1::RemoveReplicaRequest req;
        req.set_shard(s);
        req.set_node_id(id_n);
        mx::v1::RemoveReplicaResponse resp;
        st = stub->RemoveReplica(&cctx, req, &resp);
      }
      if (!st.ok()) return Fail(st, server);
      printf("shard %u: %s node %llu\n", s, sub == "add-replica" ? "added" : "removed",
             static_cast<unsigned long long>(id_n));
      fflush(stdout);
    }
    return 0;
  }
  return Usage();
}
