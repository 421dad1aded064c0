// probe.cc — registration of the control metrics.
#include "probe.h"

#include <prometheus/registry.h>

#include "mx/common/metrics.h"

namespace mx::control {

Probe& Probe::Get() {
  static Probe probe;
  return probe;
}

Probe::Probe() {
  auto& reg = metrics::Registry();
  requests_ = &prometheus::BuildCounter()
                   .Name("mx_control_admin_requests_total")
                   .Help("Admin RPCs received, by method (before the token check)")
                   .Register(reg);
  auth_failures_ =
      &prometheus::BuildCounter()
           .Name("mx_control_auth_failures_total")
           .Help("Admin calls refused: missing or unknown token (unauthenticated), role too low (forbidden)")
           .Register(reg);
  for (const char* reason : {"unauthenticated", "forbidden"}) auth_failures_->Add({{"reason", reason}});
}

}  // namespace mx::control
