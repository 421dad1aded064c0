// metrics.cc — process registry and the /metrics HTTP endpoint (prometheus-cpp).
#include "mx/common/metrics.h"

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <exception>

namespace mx::metrics {

namespace {
// The exposer holds collectables as weak_ptr, so the registry is owned by a
// shared_ptr that lives as long as the process.
const std::shared_ptr<prometheus::Registry>& SharedRegistry() {
  static auto* registry = new std::shared_ptr<prometheus::Registry>(std::make_shared<prometheus::Registry>());
  return *registry;
}
}  // namespace

prometheus::Registry& Registry() {
  return *SharedRegistry();
}

Endpoint::Endpoint(std::unique_ptr<prometheus::Exposer> exposer) : exposer_(std::move(exposer)) {}
Endpoint::~Endpoint() = default;

Result<std::unique_ptr<Endpoint>> Endpoint::Start(const std::string& listen) {
  // prometheus-cpp (civetweb) reports bind failures by throwing; contain it here.
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/1);
    exposer->RegisterCollectable(SharedRegistry());
    return std::unique_ptr<Endpoint>(new Endpoint(std::move(exposer)));
  } catch (const std::exception& e) {
    return Status(Code::kUnavailable, "cannot serve /metrics on " + listen + ": " + e.what());
  }
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double> buckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30};
  return buckets;
}

}  // namespace mx::metrics
