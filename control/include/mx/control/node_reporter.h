// node_reporter.h — every mxd process's link to the cluster's node table:
// a heartbeat to shard 0's leader every few seconds (roles, version, load,
// whether it is drained) whose answer says whether an operator asked this
// node to drain (mxctl drain / undrain).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mx/common/config.h"

namespace mx::v1 {
class NodeInfo;
}

namespace mx::control {

struct NodeHooks {
  // Called when the drain flag changes (and once with the first answer).
  std::function<void(bool drain)> set_drain;
  // Fills the load fields (sessions, in_flight) and `drained`.
  std::function<void(v1::NodeInfo* info, bool draining)> report;
};

class NodeReporter {
 public:
  virtual ~NodeReporter() = default;
  virtual void Stop() = 0;
};

std::unique_ptr<NodeReporter> StartNodeReporter(const Config& config, std::vector<std::string> roles, NodeHooks hooks,
                                                std::chrono::milliseconds every = std::chrono::seconds(2));

}  // namespace mx::control
