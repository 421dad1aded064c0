// grpc_backend.cc — Enqueue over gRPC's callback API (never blocks the caller).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>

#include "mx/common/async_call.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/ingress/enqueue_backend.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::ingress {
namespace {

class GrpcEnqueueBackend final : public EnqueueBackend {
 public:
  GrpcEnqueueBackend(const std::vector<std::string>& targets, std::chrono::milliseconds deadline)
      : deadline_(deadline) {
    for (const auto& t : targets) stubs_.push_back(v1::Queue::NewStub(MakeChannel(t)));
  }

  void Enqueue(v1::NewMessage message, Done done) override {
    auto call = AsyncCall<v1::EnqueueRequest, v1::EnqueueResponse>::WithDeadline(deadline_);
    size_t shard = std::hash<std::string>()(message.envelope().qid()) % stubs_.size();
    call->req.mutable_message()->Swap(&message);
    stubs_[shard]->async()->Enqueue(&call->ctx, &call->req, &call->resp,
                                    [call, done = std::move(done)](grpc::Status s) {
                                      if (s.ok()) return done(Status::Ok());
                                      done(Status(static_cast<Code>(s.error_code()), s.error_message()));
                                    });
  }

  void RecordStats(const v1::MailerStats& delta) override {
    auto call = AsyncCall<v1::RecordStatsRequest, v1::RecordStatsResponse>::WithDeadline(deadline_);
    *call->req.add_deltas() = delta;
    stubs_[0]->async()->RecordStats(&call->ctx, &call->req, &call->resp, [call](grpc::Status s) {
      if (!s.ok()) log::Warn("mailstats report failed: " + s.error_message());
    });
  }

 private:
  std::chrono::milliseconds deadline_;
  std::vector<std::unique_ptr<v1::Queue::Stub>> stubs_;
};

}  // namespace

std::shared_ptr<EnqueueBackend> MakeGrpcEnqueueBackend(const std::vector<std::string>& targets,
                                                       std::chrono::milliseconds deadline) {
  return std::make_shared<GrpcEnqueueBackend>(targets, deadline);
}

}  // namespace mx::ingress
