// policy_tester.h — `mxctl policy test`: runs the acceptance policy for a
// made-up client and envelope, step by step, without a session or a queue
// (sendmail -bt for the cluster).
//
// The tester holds its own copy of the policy, loaded from the same mx.yaml
// and maps as an ingress node and reloaded with them (SIGHUP). DNS lookups
// (reverse name, DNSBL) are real. Test() blocks for at most the DNS timeout:
// call it from an RPC thread, never from an event loop.
#pragma once

#include <atomic>
#include <memory>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/result.h"
#include "mx/ingress/client_lookup.h"
#include "mx/ingress/policy.h"
#include "mx/v1/control.pb.h"

namespace mx::ingress {

class PolicyTester {
 public:
  // Never fails for a bad policy: Test() then answers with the load error.
  static Result<std::unique_ptr<PolicyTester>> Start(const Config& config, const Clock& clock);

  // Loads the policy from config; on error the previous one stays.
  Status Reload(const Config& config);
  // The same from a pushed policy.
  Status ApplyBundle(const v1::PolicyBundle& bundle);
  std::string Version() const {
    auto p = policy_.load();
    return p ? p->version() : "";
  }
  // kInvalidArgument for a bad request, kFailedPrecondition when no policy loaded.
  Result<v1::PolicyTestResponse> Test(const v1::PolicyTestRequest& request) const;

 private:
  PolicyTester(std::unique_ptr<ClientLookup> lookup) : lookup_(std::move(lookup)) {}
  Status Install(Result<std::shared_ptr<const Policy>> policy);

  std::unique_ptr<ClientLookup> lookup_;
  std::atomic<std::shared_ptr<const Policy>> policy_;
  Status load_error_;
  IngressConfig local_;    // this node's own settings (kept under a pushed policy)
  mutable std::mutex mu_;  // guards load_error_ and local_
};

}  // namespace mx::ingress
