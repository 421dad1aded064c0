// metrics.h — the process-wide Prometheus registry and its /metrics endpoint.
//
// Components define their metrics in one probe class each (ingress/probe.h,
// queue/probe.h, delivery/probe.h) registered against this registry.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mx/common/result.h"

namespace prometheus {
class Registry;
class Exposer;
}  // namespace prometheus

namespace mx::metrics {

prometheus::Registry& Registry();

// Serves /metrics on listen ("host:port"). Keeps serving until destroyed.
class Endpoint {
 public:
  static Result<std::unique_ptr<Endpoint>> Start(const std::string& listen);
  ~Endpoint();

 private:
  explicit Endpoint(std::unique_ptr<prometheus::Exposer> exposer);
  std::unique_ptr<prometheus::Exposer> exposer_;
};

// Latency buckets in seconds (100us .. 30s) shared by latency histograms.
const std::vector<double>& LatencyBuckets();

}  // namespace mx::metrics
