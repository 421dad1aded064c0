// metrics.cc — process registry and the /metrics HTTP endpoint (prometheus-cpp).
#include "mx/common/metrics.h"

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <exception>

namespace mx::metrics {

prometheus::Registry& Registry() {
  static auto* registry = new prometheus::Registry();  // lives as long as the process
  return *registry;
}

Endpoint::Endpoint(std::unique_ptr<prometheus::Exposer> exposer) : exposer_(std::move(exposer)) {}
Endpoint::~Endpoint() = default;

Result<std::unique_ptr<Endpoint>> Endpoint::Start(const std::string& listen) {
  // prometheus-cpp (civetweb) reports bind failures by throwing; contain it here.
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/1);
    // Registry() outlives the exposer; hand it a non-owning shared_ptr.
    exposer->RegisterCollectable(std::shared_ptr<prometheus::Registry>(&Registry(), [](auto*) {}));
    return std::unique_ptr<Endpoint>(new Endpoint(std::move(exposer)));
  } catch (const std::exception& e) {
    return Status(Code::kUnavailable, "cannot serve /metrics on " + listen + ": " + e.what());
  }
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double> buckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                              0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                              5,      10,      30};
  return buckets;
}

}  // namespace mx::metrics
