// async_call.h — the state one gRPC callback-API call must keep alive until its
// completion runs: context, request, response. Held by shared_ptr in the callback.
#pragma once

#include <grpcpp/client_context.h>

#include <chrono>
#include <memory>

namespace mx {

template <typename Request, typename Response>
struct AsyncCall {
  grpc::ClientContext ctx;
  Request req;
  Response resp;

  static std::shared_ptr<AsyncCall> WithDeadline(std::chrono::milliseconds deadline) {
    auto call = std::make_shared<AsyncCall>();
    call->ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    return call;
  }
};

}  // namespace mx
