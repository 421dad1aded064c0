// node_reporter.h — every mxd process's link to the cluster's node table:
// a heartbeat to shard 0's leader every few seconds (roles, version, load,
// whether it is drained) whose answer says whether an operator asked this
// node to drain (mxctl drain / undrain) and which pushed acceptance policy
// is current: a node whose version differs fetches it and swaps it in.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mx/common/config.h"

#include "mx/common/result.h"

namespace mx::v1 {
class NodeInfo;
class PolicyBundle;
}  // namespace mx::v1

namespace mx::control {

struct NodeHooks {
  // Called when the drain flag changes (and once with the first answer).
  std::function<void(bool drain)> set_drain;
  // Fills the load fields (sessions, in_flight), `drained` and policy_version.
  std::function<void(v1::NodeInfo* info, bool draining)> report;
  // Installs a pushed policy whole, or returns why not (processes that run
  // the acceptance policy: ingress, control's policy test). Unset: the
  // process has no policy and never fetches one.
  std::function<Status(const v1::PolicyBundle& bundle)> apply_policy;
};

class NodeReporter {
 public:
  virtual ~NodeReporter() = default;
  virtual void Stop() = 0;
};

std::unique_ptr<NodeReporter> StartNodeReporter(const Config& config, std::vector<std::string> roles, NodeHooks hooks,
                                                std::chrono::milliseconds every = std::chrono::seconds(2));

}  // namespace mx::control
