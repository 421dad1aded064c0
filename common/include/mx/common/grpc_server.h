// grpc_server.h — the one way mx starts a gRPC server: health checking and
// reflection on, message size limits set, bound address checked.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mx/common/result.h"

namespace grpc {
class Server;
class Service;
class Channel;
}  // namespace grpc

namespace mx {

// Largest gRPC message mx sends or accepts (a whole message body plus envelope).
inline constexpr int kMaxGrpcMessageBytes = 64 * 1024 * 1024;

Result<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& listen,
                                                      const std::vector<grpc::Service*>& services);

// An insecure channel to target with mx's message size limits.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

}  // namespace mx
