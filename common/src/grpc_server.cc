// grpc_server.cc — gRPC server/channel construction shared by every role.
#include "mx/common/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <map>
#include <mutex>

#include "mx/common/map_file.h"

namespace mx {
namespace {

Result<std::string> ReadPem(const std::string& path, const char* what) {
  auto text = ReadMapFile(path);
  if (!text.ok()) return Status(Code::kNotFound, std::string("cannot read ") + what + " " + path);
  return text;
}

void ApplyLimits(grpc::ChannelArguments* args) {
  args->SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  args->SetMaxSendMessageSize(kMaxGrpcMessageBytes);
}

}  // namespace

Result<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& listen,
                                                      const std::vector<grpc::Service*>& services,
                                                      const GrpcServerTls& tls) {
  static const bool once = [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    return true;
  }();
  (void)once;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!tls.cert_file.empty()) {
    auto cert = ReadPem(tls.cert_file, "TLS certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(tls.key_file, "TLS key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions opts(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    opts.pem_key_cert_pairs.push_back({*key, *cert});
    if (!tls.client_ca_file.empty()) {
      auto ca = ReadPem(tls.client_ca_file, "client CA");
      if (!ca.ok()) return ca.status();
      opts.pem_root_certs = *ca;
      opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(opts);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, creds, &port);
  builder.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  builder.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  for (auto* s : services) builder.RegisterService(s);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Status(Code::kUnavailable, "cannot listen for gRPC on " + listen);
  }
  return server;
}

namespace {

struct InProcess {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;  // by target
  static InProcess& Get() {
    static InProcess* p = new InProcess;  // never destroyed: channels outlive exit paths
    return *p;
  }
};

}  // namespace

void ServeInProcess(const std::vector<std::string>& targets, grpc::Server& server) {
  grpc::ChannelArguments args;
  ApplyLimits(&args);
  auto channel = server.InProcessChannel(args);
  auto& in = InProcess::Get();
  std::lock_guard lock(in.mu);
  for (const auto& t : targets) {
    if (!t.empty()) in.channels[t] = channel;
  }
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  {
    auto& in = InProcess::Get();
    std::lock_guard lock(in.mu);
    if (auto it = in.channels.find(target); it != in.channels.end()) return it->second;
  }
  grpc::ChannelArguments args;
  ApplyLimits(&args);
  // Reconnect quickly after a queue restart: ingress answers 451 meanwhile.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

Result<std::shared_ptr<grpc::Channel>> MakeTlsChannel(const std::string& target, const GrpcClientTls& tls) {
  grpc::SslCredentialsOptions opts;
  if (!tls.ca_file.empty()) {
    auto ca = ReadPem(tls.ca_file, "CA certificate");
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
  }
  if (!tls.cert_file.empty()) {
    auto cert = ReadPem(tls.cert_file, "client certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(tls.key_file, "client key");
    if (!key.ok()) return key.status();
    opts.pem_cert_chain = *cert;
    opts.pem_private_key = *key;
  }
  grpc::ChannelArguments args;
  ApplyLimits(&args);
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(opts), args);
}

}  // namespace mx
