// admin_service.h — the control plane's Admin service (mx.v1.Admin): mailq and
// mailstats across every queue shard. Stateless: it reads from the shards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace grpc {
class Service;
}

namespace mx::control {

// queues: queue node addresses to start from; shards: how many shards the
// cluster has. Calls go to each shard's leader (found as clients find it).
std::unique_ptr<grpc::Service> MakeAdminService(const std::vector<std::string>& queues, uint32_t shards);

}  // namespace mx::control
