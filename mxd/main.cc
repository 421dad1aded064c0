// mxd — one binary for every role: `mxd ingress|queue|delivery|control|all`.
//
// The main only reads the config, starts the roles asked for on one role
// skeleton (Role: start, reload, apply a pushed policy, drain, report, stop)
// beside the shared pieces (logging, /metrics, gRPC health + reflection), and
// waits for a signal: SIGTERM/SIGINT stop the node, SIGHUP reloads the policy.
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/codegen/service_type.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/common/malloc_tuning.h"
#include "mx/common/metrics.h"
#include "mx/control/admin_service.h"
#include "mx/control/node_reporter.h"
#include "mx/delivery/resolver.h"
#include "mx/delivery/routing.h"
#include "mx/delivery/worker.h"
#include "mx/ingress/enqueue_backend.h"
#include "mx/ingress/policy.h"
#include "mx/ingress/policy_tester.h"
#include "mx/ingress/server.h"
#include "mx/queue/service.h"
#include "mx/v1/control.pb.h"
#include "mx/v1/types.pb.h"

namespace {

int Usage() {
  fprintf(stderr,
          "usage: mxd ROLE [--config FILE] [--set KEY=VALUE]... [--check]\n"
          "roles: all (embedded single node), ingress, queue, delivery, control\n"
          "FILE defaults to /etc/mx/mx.yaml; --set overrides one key of it\n"
          "(queue.node_id=2, node_name=mx-1; the value is YAML); --check\n"
          "validates the configuration and the maps it names, then exits\n");
  return 64;
}

// The health service name a readiness probe asks for.
constexpr const char* kReadyService = "mx.ready";

int Die(const std::string& what) {
  mx::log::Error(what);
  return 1;
}

// --check: what the roles would load at start, without starting anything
// (the maps of the ingress policy, the mailertable, the admin tokens).
int CheckOnly(const mx::Config& config, const std::string& role) {
  const bool all = role == "all";
  if (all || role == "ingress" || role == "control") {
    auto p = mx::ingress::Policy::Load(config.ingress, config.config_dir);
    if (!p.ok()) return Die("config: ingress policy: " + p.status().message());
  }
  if (all || role == "ingress") {
    if (auto st = mx::ingress::CheckTls(config.ingress, config.config_dir); !st.ok())
      return Die("config: " + st.message());
  }
  if (all || role == "delivery") {
    auto r = mx::delivery::Routing::Load(config.delivery, config.config_dir);
    if (!r.ok()) return Die("config: delivery: " + r.status().message());
  }
  if (all || role == "control") {
    auto a = mx::control::AdminAuth::Load(config.control, config.config_dir);
    if (!a.ok()) return Die("config: control: " + a.status().message());
  }
  printf("mxd %s: configuration OK\n", role.c_str());
  return 0;
}

// ---- the role skeleton: every role is started, reloaded, given a pushed
// policy, drained, asked for its report and stopped the same way ----

class Role {
 public:
  virtual ~Role() = default;
  // SIGHUP: mx.yaml and its maps again; a refusal keeps what runs.
  virtual mx::Status Reload(const mx::Config&) { return mx::Status::Ok(); }
  // Whether the role runs the acceptance policy (reloads, pushes).
  virtual bool has_policy() const { return false; }
  // A policy pushed through control (mxctl policy apply).
  virtual mx::Status ApplyPolicy(const mx::v1::PolicyBundle&) { return mx::Status::Ok(); }
  // mxctl drain / undrain.
  virtual void SetDraining(bool) {}
  // Its part of the node table's entry for this process.
  virtual void Report(mx::v1::NodeInfo*) const {}
  virtual void Stop() = 0;
};

using RolePtr = mx::Result<std::unique_ptr<Role>>;

class QueueRole final : public Role {
 public:
  static RolePtr Start(const mx::Config& config, const mx::Clock& clock) {
    auto role = std::make_unique<QueueRole>();
    auto q = mx::queue::StartQueueNode(config.queue, clock);
    if (!q.ok()) return q.status();
    role->node_ = std::move(q).value();
    auto s = mx::StartGrpcServer(config.queue.listen, {role->node_->service(), role->node_->metadata_service()});
    if (!s.ok()) return s.status();
    role->server_ = std::move(s).value();
    // Roles of this process reach their own queue without the socket.
    std::vector<std::string> self{config.queue.listen};
    for (const auto& p : config.queue.peers) {
      if (p.id == config.queue.node_id) self.push_back(p.grpc);
    }
    mx::ServeInProcess(self, *role->server_);
    mx::log::Info("queue serving gRPC on " + config.queue.listen);
    return std::unique_ptr<Role>(std::move(role));
  }
  mx::queue::QueueNode* node() { return node_.get(); }
  void Stop() override {
    // The queue first: closing the Raft logs answers every pending Enqueue/Ack
    // at once (UNAVAILABLE, so clients retry on the next leader) instead of
    // letting the server's shutdown deadline cancel them.
    node_->Stop();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
  }

 private:
  std::unique_ptr<mx::queue::QueueNode> node_;
  std::unique_ptr<grpc::Server> server_;
};

class ControlRole final : public Role {
 public:
  static RolePtr Start(const mx::Config& config, const mx::Clock& clock) {
    auto role = std::make_unique<ControlRole>();
    auto t = mx::ingress::PolicyTester::Start(config, clock);
    if (!t.ok()) return t.status();
    role->tester_ = std::move(t).value();
    auto auth = mx::control::AdminAuth::Load(config.control, config.config_dir);
    if (!auth.ok()) return auth.status();
    if (auth->open()) {
      mx::log::Warn("control.auth is none: anyone who reaches " + config.control.listen +
                    " may administer the cluster");
    }
    auto* tester = role->tester_.get();
    role->admin_ = mx::control::MakeAdminService(
        config.control.queue, config.queue.shards, std::move(auth).value(),
        [tester](const mx::v1::PolicyTestRequest& req, mx::v1::PolicyTestResponse* resp) {
          auto r = tester->Test(req);
          if (!r.ok()) return grpc::Status(static_cast<grpc::StatusCode>(r.status().code()), r.status().message());
          *resp = std::move(r).value();
          return grpc::Status::OK;
        },
        [](const mx::v1::PolicyBundle& bundle) -> mx::Result<std::string> {
          auto p = mx::ingress::Policy::FromBundle(bundle);
          if (!p.ok()) return p.status();
          return (*p)->Describe();
        });
    mx::GrpcServerTls tls{config.control.tls_cert_file, config.control.tls_key_file, config.control.tls_client_ca_file};
    auto s = mx::StartGrpcServer(config.control.listen, {role->admin_.get()}, tls);
    if (!s.ok()) return mx::Status(s.status().code(), "control: " + s.status().message());
    role->server_ = std::move(s).value();
    mx::log::Info("control serving gRPC on " + config.control.listen +
                  (tls.cert_file.empty()        ? ""
                   : tls.client_ca_file.empty() ? " (TLS)"
                                                : " (mTLS)"));
    return std::unique_ptr<Role>(std::move(role));
  }
  mx::Status Reload(const mx::Config& config) override {
    auto st = tester_->Reload(config);
    if (!st.ok()) mx::log::Error("SIGHUP: policy test keeps the previous policy: " + st.message());
    return st;
  }
  bool has_policy() const override { return true; }
  mx::Status ApplyPolicy(const mx::v1::PolicyBundle& bundle) override { return tester_->ApplyBundle(bundle); }
  void Report(mx::v1::NodeInfo* info) const override { info->set_policy_version(tester_->Version()); }
  void Stop() override { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3)); }

 private:
  std::unique_ptr<mx::ingress::PolicyTester> tester_;
  std::unique_ptr<grpc::Service> admin_;
  std::unique_ptr<grpc::Server> server_;
};

class DeliveryRole final : public Role {
 public:
  static RolePtr Start(const mx::Config& config, const mx::Clock& clock) {
    mx::delivery::ResolverOptions ro;
    ro.ipv4 = config.delivery.inet_protocols != "ipv6";
    ro.ipv6 = config.delivery.inet_protocols != "ipv4";
    ro.work_around_broken_aaaa = config.delivery.work_around_broken_aaaa;
    ro.dnssec = config.delivery.dane;
    auto r = mx::delivery::MakeAresResolver(
        config.delivery.dns_servers, std::chrono::duration_cast<std::chrono::milliseconds>(config.delivery.dns_timeout),
        ro);
    if (!r.ok()) return r.status();
    auto w = mx::delivery::StartDelivery(config, std::move(r).value(), clock);
    if (!w.ok()) return w.status();
    auto role = std::make_unique<DeliveryRole>();
    role->worker_ = std::move(w).value();
    return std::unique_ptr<Role>(std::move(role));
  }
  void SetDraining(bool drain) override { worker_->SetDraining(drain); }
  void Report(mx::v1::NodeInfo* info) const override {
    info->set_in_flight(static_cast<uint64_t>(worker_->InFlight()));
  }
  void Stop() override { worker_->Stop(); }

 private:
  std::unique_ptr<mx::delivery::DeliveryWorker> worker_;
};

class IngressRole final : public Role {
 public:
  // queue: this process's queue node (mxd all), or null.
  static RolePtr Start(const mx::Config& config, const mx::Clock& clock, mx::queue::QueueNode* queue) {
    std::shared_ptr<mx::ingress::EnqueueBackend> backend = mx::ingress::MakeGrpcEnqueueBackend(
        config.ingress.queue, config.queue.shards,
        std::chrono::duration_cast<std::chrono::milliseconds>(config.ingress.enqueue_timeout));
    if (queue) {
      // mxd all: straight into this node's shards while it leads them.
      backend = mx::ingress::MakeLocalFirstEnqueueBackend(
          [queue](uint32_t shard, const mx::v1::NewMessage& m, std::function<void(const mx::Status&)> done) {
            return queue->EnqueueLocal(shard, m, std::move(done));
          },
          std::move(backend));
    }
    auto s = mx::ingress::StartIngress(config, backend, clock);
    if (!s.ok()) return s.status();
    auto role = std::make_unique<IngressRole>();
    role->server_ = std::move(s).value();
    return std::unique_ptr<Role>(std::move(role));
  }
  mx::Status Reload(const mx::Config& config) override { return server_->Reload(config); }
  bool has_policy() const override { return true; }
  mx::Status ApplyPolicy(const mx::v1::PolicyBundle& bundle) override { return server_->ApplyBundle(bundle); }
  void SetDraining(bool drain) override { server_->SetDraining(drain); }
  void Report(mx::v1::NodeInfo* info) const override {
    info->set_policy_version(server_->PolicyVersion());
    info->set_sessions(server_->Sessions());
  }
  void Stop() override { server_->Stop(); }

 private:
  std::unique_ptr<mx::ingress::IngressServer> server_;
};

// SIGHUP: every role reloads; anything invalid is refused whole.
void ReloadAll(const std::vector<std::unique_ptr<Role>>& roles, const std::string& path,
               const std::vector<std::string>& overrides) {
  auto fresh = mx::LoadConfig(path, overrides);
  if (!fresh.ok()) {
    mx::log::Error("SIGHUP: reload refused, previous policy stays in force: " + fresh.status().message());
    return;
  }
  bool ok = true, any = false;
  for (const auto& r : roles) {
    ok = r->Reload(*fresh).ok() && ok;
    any = any || r->has_policy();
  }
  if (ok && any) mx::log::Info("SIGHUP: policy reloaded");
}

// What the node table's reporter does with every role: drain, a pushed
// policy, the report.
mx::control::NodeHooks NodeHooksFor(const std::vector<std::unique_ptr<Role>>& roles, grpc::Server* health_server) {
  mx::control::NodeHooks hooks;
  hooks.set_drain = [&roles, health_server](bool drain) {
    for (auto& r : roles) r->SetDraining(drain);
    // A drained node leaves its Service's endpoints (readiness on mx.ready).
    if (health_server) health_server->GetHealthCheckService()->SetServingStatus(kReadyService, !drain);
  };
  if (std::any_of(roles.begin(), roles.end(), [](const auto& r) { return r->has_policy(); })) {
    hooks.apply_policy = [&roles](const mx::v1::PolicyBundle& bundle) {
      for (auto& r : roles) {
        if (auto st = r->ApplyPolicy(bundle); !st.ok()) return st;
      }
      return mx::Status::Ok();
    };
  }
  hooks.report = [&roles](mx::v1::NodeInfo* info, bool draining) {
    info->set_policy_version("");
    info->set_sessions(0);
    info->set_in_flight(0);
    for (const auto& r : roles) r->Report(info);  // ingress last: its policy version wins
    info->set_drained(draining && info->sessions() == 0 && info->in_flight() == 0);
  };
  return hooks;
}

}  // namespace

int main(int argc, char** argv) {
  mx::TuneMalloc();
  // gRPC's absl::Mutex checks every lock order for deadlock cycles (about
  // 2.5 % of mxd's CPU under SMTP load); mx's locks are tested with TSan.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (argc < 2) return Usage();
  std::string role = argv[1];
  std::string config_path = "/etc/mx/mx.yaml";
  std::vector<std::string> overrides;
  bool check_only = false;
  for (int i = 2; i < argc; ++i) {
    if ((!strcmp(argv[i], "--config") || !strcmp(argv[i], "-c")) && i + 1 < argc)
      config_path = argv[++i];
    else if (!strcmp(argv[i], "--set") && i + 1 < argc)
      overrides.emplace_back(argv[++i]);
    else if (!strcmp(argv[i], "--check"))
      check_only = true;
    else
      return Usage();
  }
  bool all = role == "all";
  bool want_queue = all || role == "queue", want_ingress = all || role == "ingress",
       want_delivery = all || role == "delivery", want_control = all || role == "control";
  if (!want_queue && !want_ingress && !want_delivery && !want_control) return Usage();

  // Block the signals we wait for before any thread starts, so all inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto cfg = mx::LoadConfig(config_path, overrides);
  if (!cfg.ok()) return Die("config: " + cfg.status().message());
  const mx::Config& config = *cfg;
  if (check_only) return CheckOnly(config, role);
  mx::log::SetNodeName(config.node_name);
  mx::log::Level level;
  if (!mx::log::ParseLevel(config.log_level, &level)) return Die("config: log_level: unknown level");
  mx::log::SetLevel(level);
  auto& clock = mx::SystemClock::Instance();

  std::unique_ptr<mx::metrics::Endpoint> metrics;
  if (!config.metrics_listen.empty()) {
    auto m = mx::metrics::Endpoint::Start(config.metrics_listen);
    if (!m.ok()) return Die(m.status().message());
    metrics = std::move(m).value();
  }

  // Started in this order (an ingress in `all` writes to its own queue);
  // stopped in the reverse: mail stops coming in first.
  std::vector<std::unique_ptr<Role>> roles;
  std::vector<std::string> names;
  mx::queue::QueueNode* queue = nullptr;
  const std::pair<bool, const char*> wanted[] = {
      {want_queue, "queue"}, {want_control, "control"}, {want_delivery, "delivery"}, {want_ingress, "ingress"}};
  for (auto [on, name] : wanted) {
    if (!on) continue;
    const std::string n = name;
    RolePtr r = n == "queue"      ? QueueRole::Start(config, clock)
                : n == "control"  ? ControlRole::Start(config, clock)
                : n == "delivery" ? DeliveryRole::Start(config, clock)
                                  : IngressRole::Start(config, clock, queue);
    if (!r.ok()) return Die(r.status().message());
    if (n == "queue") queue = static_cast<QueueRole&>(**r).node();
    roles.push_back(std::move(r).value());
  }
  // The node table lists roles in this order.
  for (auto [on, name] : {std::pair{want_ingress, "ingress"}, std::pair{want_queue, "queue"},
                          std::pair{want_delivery, "delivery"}, std::pair{want_control, "control"}}) {
    if (on) names.push_back(name);
  }

  // Probes: a health-only gRPC server (control may be TLS, ingress and
  // delivery serve no gRPC of their own).
  std::unique_ptr<grpc::Server> health_server;
  if (!config.health_listen.empty()) {
    auto h = mx::StartGrpcServer(config.health_listen, {});
    if (!h.ok()) return Die("health: " + h.status().message());
    health_server = std::move(h).value();
    health_server->GetHealthCheckService()->SetServingStatus(kReadyService, true);
    mx::log::Info("gRPC health on " + config.health_listen);
  }
  // The node table: this process reports itself and learns whether to drain.
  auto reporter = mx::control::StartNodeReporter(config, names, NodeHooksFor(roles, health_server.get()));

  mx::log::Info("mxd " + role + " started (config " + config_path + ")");
  for (;;) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGHUP) {
      ReloadAll(roles, config_path, overrides);
      continue;
    }
    mx::log::Info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ", stopping");
    break;
  }
  if (health_server) health_server->GetHealthCheckService()->Shutdown();  // probes see NOT_SERVING
  reporter->Stop();
  for (auto it = roles.rbegin(); it != roles.rend(); ++it) (*it)->Stop();
  if (health_server) health_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
  mx::log::Info("mxd stopped");
  fflush(stdout);
  fflush(stderr);
  // Everything is stopped: every service answered or cancelled its calls,
  // the Raft logs are closed (fsync'd) and hold what RocksDB has not flushed.
  // Leave without destructors: releasing the last gRPC objects lets gRPC
  // 1.51 wind down its completion-queue threads, which now and then aborts
  // (grpc_cq_internal_unref: "prior > 0") in a process that is exiting.
  _exit(0);
}
