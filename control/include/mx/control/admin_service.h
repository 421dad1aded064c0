// admin_service.h — the control plane's Admin service (mx.v1.Admin): mailq and
// mailstats across every queue shard. Stateless: it reads from the shards.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace grpc {
class Service;
}

namespace mx::control {

// queues: addresses of every queue shard.
std::unique_ptr<grpc::Service> MakeAdminService(const std::vector<std::string>& queues);

}  // namespace mx::control
