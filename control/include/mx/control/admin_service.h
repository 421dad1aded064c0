// admin_service.h — the control plane's Admin service (mx.v1.Admin): mailq,
// mailstats, cluster status and membership across every queue shard, and the
// policy test. Stateless: it reads from the shards.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mx/common/result.h"
#include "mx/control/auth.h"

namespace grpc {
class Service;
class Status;
}  // namespace grpc

namespace mx::v1 {
class PolicyTestRequest;
class PolicyTestResponse;
class PolicyBundle;
}  // namespace mx::v1

namespace mx::control {

// Answers PolicyTest (the policy engine belongs to the ingress; mxd passes it in).
using PolicyTestFn = std::function<grpc::Status(const v1::PolicyTestRequest&, v1::PolicyTestResponse*)>;
// Checks a policy to be pushed the way every node will load it; returns its
// description or the first error (with file and line).
using PolicyValidateFn = std::function<Result<std::string>(const v1::PolicyBundle&)>;

// queues: queue node addresses to start from; shards: how many shards the
// cluster has. Calls go to each shard's leader (found as clients find it).
// Without policy_test, PolicyTest answers UNIMPLEMENTED.
// Every call is checked against auth (read or operator role). Without
// validate, PolicyApply answers UNIMPLEMENTED.
std::unique_ptr<grpc::Service> MakeAdminService(const std::vector<std::string>& queues, uint32_t shards, AdminAuth auth,
                                                PolicyTestFn policy_test = nullptr,
                                                PolicyValidateFn validate = nullptr);

}  // namespace mx::control
