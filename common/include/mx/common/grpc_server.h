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

// TLS for a server: PEM files. No cert_file: plaintext. client_ca_file:
// clients must present a certificate it signed (mTLS).
struct GrpcServerTls {
  std::string cert_file, key_file, client_ca_file;
};

Result<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& listen,
                                                      const std::vector<grpc::Service*>& services,
                                                      const GrpcServerTls& tls = {});

// An insecure channel to target with mx's message size limits; for a target
// served by this process (ServeInProcess), its in-process channel.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// Calls to any of `targets` made by this process through MakeChannel go to
// `server` over gRPC's in-process transport: no socket, no HTTP/2 framing, no
// poller wake-ups (`mxd all`: ingress, delivery and control reach the queue of
// their own process so). Calls from other processes still use the socket.
void ServeInProcess(const std::vector<std::string>& targets, grpc::Server& server);

// TLS for a client: ca_file verifies the server (empty: system roots);
// cert_file/key_file identify the client for mTLS.
struct GrpcClientTls {
  std::string ca_file, cert_file, key_file;
};
Result<std::shared_ptr<grpc::Channel>> MakeTlsChannel(const std::string& target, const GrpcClientTls& tls);

}  // namespace mx
