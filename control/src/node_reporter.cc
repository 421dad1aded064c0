// node_reporter.cc — heartbeats to the node table on shard 0.
#include "mx/control/node_reporter.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "mx/common/log.h"
#include "mx/common/thread_name.h"
#include "mx/queue/client.h"
#include "mx/queue/metadata_client.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::control {
namespace {

constexpr const char* kVersion = "0.1.0";

class Reporter final : public NodeReporter {
 public:
  Reporter(const Config& config, std::vector<std::string> roles, NodeHooks hooks, std::chrono::milliseconds every)
      : router_(Seeds(config), config.queue.shards), hooks_(std::move(hooks)), every_(every) {
    info_.set_name(config.node_name);
    std::string addresses;
    auto add = [&](const char* what, const std::string& where) {
      if (!where.empty()) addresses += (addresses.empty() ? "" : ", ") + std::string(what) + "=" + where;
    };
    for (const auto& r : roles) {
      if (r == "ingress") add("smtp", config.ingress.listen);
      if (r == "queue") add("queue", config.queue.listen);
      if (r == "control") add("control", config.control.listen);
    }
    add("metrics", config.metrics_listen);
    info_.set_addresses(addresses);
    for (auto& r : roles) info_.add_roles(std::move(r));
    info_.set_version(kVersion);
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    info_.set_host(host);
    info_.set_started_unix_us(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    thread_ = std::thread([this] {
      SetThreadName("mx-report");
      Run();
    });
  }
  ~Reporter() override { Stop(); }

  void Stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  static std::vector<std::string> Seeds(const Config& c) {
    // Any role's queue list names the same cluster; delivery's is filled by default.
    return !c.delivery.queue.empty() ? c.delivery.queue : c.ingress.queue;
  }

  void Run() {
    int failures = 0;
    for (;;) {
      v1::HeartbeatRequest req;
      *req.mutable_node() = info_;
      if (hooks_.report) hooks_.report(req.mutable_node(), draining_);
      req.mutable_node()->set_policy_error(policy_error_);
      v1::HeartbeatResponse resp;
      auto st = metadata_.Call(&v1::Metadata::Stub::Heartbeat, req, &resp, {std::chrono::seconds(5), {}});
      if (st.ok()) {
        failures = 0;
        if (!known_ || resp.drain() != draining_) {
          known_ = true;
          draining_ = resp.drain();
          if (hooks_.set_drain) hooks_.set_drain(draining_);
        }
        if (hooks_.apply_policy && !resp.policy_version().empty() && resp.policy_version() != policy_tried_) {
          FetchPolicy(resp.policy_version());
        }
      } else if (++failures == 5) {  // not just an election at start
        // The node keeps working as it was; the cluster just does not see it.
        log::Warn("heartbeats to the node table are failing: " + st.error_message());
      }
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, st.ok() ? every_ : std::chrono::milliseconds(500), [&] { return stopping_; })) return;
    }
  }

  // The cluster's current policy, once per version (a bad one is not
  // retried until the next push; its error is reported in heartbeats).
  void FetchPolicy(const std::string& version) {
    v1::GetPolicyRequest req;
    v1::GetPolicyResponse resp;
    auto st = metadata_.Call(&v1::Metadata::Stub::GetPolicy, req, &resp, {std::chrono::seconds(10), {}});
    if (!st.ok()) return;  // the next heartbeat tries again
    policy_tried_ = version;
    if (resp.bundle().version() != version) policy_tried_ = resp.bundle().version();  // newer meanwhile
    auto applied = hooks_.apply_policy(resp.bundle());
    policy_error_ = applied.ok() ? "" : applied.message();
  }

  queue::QueueRouter router_;
  queue::MetadataClient metadata_{router_};
  NodeHooks hooks_;
  std::string policy_tried_;  // the pushed version last fetched and installed (or refused)
  std::string policy_error_;
  std::chrono::milliseconds every_;
  v1::NodeInfo info_;
  bool known_ = false;
  bool draining_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<NodeReporter> StartNodeReporter(const Config& config, std::vector<std::string> roles, NodeHooks hooks,
                                                std::chrono::milliseconds every) {
  return std::make_unique<Reporter>(config, std::move(roles), std::move(hooks), every);
}

}  // namespace mx::control
