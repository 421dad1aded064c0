// mxd — one binary for every role: `mxd ingress|queue|delivery|control|all`.
//
// The main only reads the config, starts the roles asked for on the shared
// skeleton (logging, /metrics, gRPC health + reflection) and waits for a signal:
// SIGTERM/SIGINT stop the node, SIGHUP reloads the ingress policy.
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/codegen/service_type.h>
#include <signal.h>
#include <unistd.h>

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

  std::unique_ptr<mx::queue::QueueNode> queue;
  std::unique_ptr<grpc::Server> queue_server;
  if (want_queue) {
    auto q = mx::queue::StartQueueNode(config.queue, clock);
    if (!q.ok()) return Die(q.status().message());
    queue = std::move(q).value();
    auto s = mx::StartGrpcServer(config.queue.listen, {queue->service(), queue->metadata_service()});
    if (!s.ok()) return Die(s.status().message());
    queue_server = std::move(s).value();
    // Roles of this process reach their own queue without the socket.
    std::vector<std::string> self{config.queue.listen};
    for (const auto& p : config.queue.peers) {
      if (p.id == config.queue.node_id) self.push_back(p.grpc);
    }
    mx::ServeInProcess(self, *queue_server);
    mx::log::Info("queue serving gRPC on " + config.queue.listen);
  }

  std::unique_ptr<grpc::Service> admin;
  std::unique_ptr<grpc::Server> control_server;
  std::unique_ptr<mx::ingress::PolicyTester> policy_tester;
  if (want_control) {
    auto t = mx::ingress::PolicyTester::Start(config, clock);
    if (!t.ok()) return Die(t.status().message());
    policy_tester = std::move(t).value();
    auto* tester = policy_tester.get();
    auto auth = mx::control::AdminAuth::Load(config.control, config.config_dir);
    if (!auth.ok()) return Die(auth.status().message());
    if (auth->open())
      mx::log::Warn("control.auth is none: anyone who reaches " + config.control.listen +
                    " may administer the cluster");
    admin = mx::control::MakeAdminService(
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
    auto s = mx::StartGrpcServer(config.control.listen, {admin.get()}, tls);
    if (!s.ok()) return Die("control: " + s.status().message());
    control_server = std::move(s).value();
    mx::log::Info("control serving gRPC on " + config.control.listen +
                  (tls.cert_file.empty()        ? ""
                   : tls.client_ca_file.empty() ? " (TLS)"
                                                : " (mTLS)"));
  }

  std::unique_ptr<mx::delivery::DeliveryWorker> delivery;
  if (want_delivery) {
    mx::delivery::ResolverOptions ro;
    ro.ipv4 = config.delivery.inet_protocols != "ipv6";
    ro.ipv6 = config.delivery.inet_protocols != "ipv4";
    ro.work_around_broken_aaaa = config.delivery.work_around_broken_aaaa;
    ro.dnssec = config.delivery.dane;
    auto r = mx::delivery::MakeAresResolver(
        config.delivery.dns_servers, std::chrono::duration_cast<std::chrono::milliseconds>(config.delivery.dns_timeout),
        ro);
    if (!r.ok()) return Die(r.status().message());
    auto w = mx::delivery::StartDelivery(config, std::move(r).value(), clock);
    if (!w.ok()) return Die(w.status().message());
    delivery = std::move(w).value();
  }

  std::unique_ptr<mx::ingress::IngressServer> ingress;
  if (want_ingress) {
    std::shared_ptr<mx::ingress::EnqueueBackend> backend = mx::ingress::MakeGrpcEnqueueBackend(
        config.ingress.queue, config.queue.shards,
        std::chrono::duration_cast<std::chrono::milliseconds>(config.ingress.enqueue_timeout));
    if (queue) {
      // mxd all: straight into this node's shards while it leads them.
      auto* node = queue.get();
      backend = mx::ingress::MakeLocalFirstEnqueueBackend(
          [node](uint32_t shard, const mx::v1::NewMessage& m, std::function<void(const mx::Status&)> done) {
            return node->EnqueueLocal(shard, m, std::move(done));
          },
          config.queue.shards, std::move(backend));
    }
    auto s = mx::ingress::StartIngress(config, backend, clock);
    if (!s.ok()) return Die(s.status().message());
    ingress = std::move(s).value();
  }

  // The node table: this process reports itself and learns whether to drain.
  std::vector<std::string> roles;
  for (auto [on, name] : {std::pair{want_ingress, "ingress"}, std::pair{want_queue, "queue"},
                          std::pair{want_delivery, "delivery"}, std::pair{want_control, "control"}}) {
    if (on) roles.push_back(name);
  }
  mx::control::NodeHooks hooks;
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
  hooks.set_drain = [&](bool drain) {
    if (ingress) ingress->SetDraining(drain);
    if (delivery) delivery->SetDraining(drain);
    // A drained node leaves its Service's endpoints (readiness on mx.ready).
    if (health_server) health_server->GetHealthCheckService()->SetServingStatus(kReadyService, !drain);
  };
  if (ingress || policy_tester) {
    hooks.apply_policy = [&](const mx::v1::PolicyBundle& bundle) {
      mx::Status st = mx::Status::Ok();
      if (policy_tester) st = policy_tester->ApplyBundle(bundle);
      if (ingress && st.ok()) st = ingress->ApplyBundle(bundle);
      return st;
    };
  }
  hooks.report = [&](mx::v1::NodeInfo* info, bool draining) {
    info->set_policy_version(ingress ? ingress->PolicyVersion() : policy_tester ? policy_tester->Version() : "");
    info->set_sessions(ingress ? ingress->Sessions() : 0);
    info->set_in_flight(delivery ? static_cast<uint64_t>(delivery->InFlight()) : 0);
    info->set_drained(draining && info->sessions() == 0 && info->in_flight() == 0);
  };
  auto reporter = mx::control::StartNodeReporter(config, roles, std::move(hooks));

  mx::log::Info("mxd " + role + " started (config " + config_path + ")");
  for (;;) {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGHUP) {
      // Policy reload: mx.yaml and the map files it names. Anything invalid
      // is refused whole and the running policy stays.
      auto fresh = mx::LoadConfig(config_path, overrides);
      if (!fresh.ok()) {
        mx::log::Error("SIGHUP: reload refused, previous policy stays in force: " + fresh.status().message());
      } else {
        bool ok = true;
        if (ingress) ok = ingress->Reload(*fresh).ok();
        if (policy_tester) {
          if (auto st = policy_tester->Reload(*fresh); !st.ok()) {
            mx::log::Error("SIGHUP: policy test keeps the previous policy: " + st.message());
            ok = false;
          }
        }
        if (ok && (ingress || policy_tester)) mx::log::Info("SIGHUP: policy reloaded");
      }
      continue;
    }
    mx::log::Info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ", stopping");
    break;
  }
  if (health_server) health_server->GetHealthCheckService()->Shutdown();  // probes see NOT_SERVING
  reporter->Stop();
  // Stop taking mail first, then delivery, then the services that feed them.
  if (ingress) ingress->Stop();
  if (delivery) delivery->Stop();
  auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(3);
  if (control_server) control_server->Shutdown(deadline);
  // The queue first: closing the Raft logs answers every pending Enqueue/Ack
  // at once (UNAVAILABLE, so clients retry on the next leader) instead of
  // letting the server's shutdown deadline cancel them.
  if (queue) queue->Stop();
  if (queue_server) queue_server->Shutdown(deadline);
  if (health_server) health_server->Shutdown(deadline);
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
