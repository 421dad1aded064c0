// queue_link.cc — QueueLink over gRPC (callback API) through the
// leader-following router; MetadataLink over the MetadataClient.
#include "queue_link.h"

#include <grpcpp/grpcpp.h>

#include "mx/queue/client.h"
#include "mx/queue/metadata_client.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::delivery {
namespace {

class GrpcQueueLink final : public QueueLink {
 public:
  explicit GrpcQueueLink(queue::QueueRouter& router) : router_(router) {}

  uint32_t shards() const override { return router_.shards(); }
  bool Serving(uint32_t shard) const override { return router_.Serving(shard); }

  void Ack(uint32_t shard, std::shared_ptr<const v1::AckRequest> req, std::chrono::system_clock::time_point deadline,
           std::function<void(const grpc::Status&, bool)> done) override {
    struct Call {
      grpc::ClientContext ctx;
      std::shared_ptr<const v1::AckRequest> req;
      v1::AckResponse resp;
    };
    auto call = std::make_shared<Call>();
    call->req = std::move(req);
    call->ctx.set_deadline(deadline);
    auto target = router_.Leader(shard);
    target.stub->async()->Ack(
        &call->ctx, call->req.get(), &call->resp,
        [this, shard, call, done = std::move(done), address = target.address](const grpc::Status& s) {
          const bool new_leader = router_.Observe(shard, address, call->ctx, s);
          done(s, new_leader);
        });
  }

  grpc::Status ListHostStatus(uint32_t shard, v1::ListHostStatusResponse* resp) override {
    auto target = router_.Leader(shard);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ListHostStatusRequest req;
    req.set_shard(shard);
    auto st = target.stub->ListHostStatus(&ctx, req, resp);
    router_.Observe(shard, target.address, ctx, st);
    return st;
  }

 private:
  queue::QueueRouter& router_;
};

class GrpcMetadataLink final : public MetadataLink {
 public:
  explicit GrpcMetadataLink(queue::QueueRouter& router) : client_(router) {}

  void Permit(v1::PermitRequest req,
              std::function<void(const grpc::Status&, const v1::PermitResponse&)> done) override {
    client_.Permit(std::move(req), std::chrono::seconds(2), std::move(done));
  }

  void SetSiteStatus(v1::SiteStatus status, std::function<void(const grpc::Status&)> done) override {
    v1::SetSiteStatusRequest req;
    *req.mutable_status() = std::move(status);
    client_.SetSiteStatus(std::move(req), std::chrono::seconds(2), std::move(done));
  }

  void Suppress(v1::SuppressRequest req,
                std::function<void(const grpc::Status&, const v1::SuppressResponse&)> done) override {
    client_.Suppress(std::move(req), std::chrono::seconds(5), std::move(done));
  }

  grpc::Status ListSiteStatus(v1::ListSiteStatusResponse* resp) override {
    return client_.Call(&v1::Metadata::Stub::ListSiteStatus, v1::ListSiteStatusRequest(), resp,
                        {std::chrono::seconds(2), {}});
  }

 private:
  queue::MetadataClient client_;
};

}  // namespace

std::unique_ptr<QueueLink> MakeGrpcQueueLink(queue::QueueRouter& router) {
  return std::make_unique<GrpcQueueLink>(router);
}
std::unique_ptr<MetadataLink> MakeGrpcMetadataLink(queue::QueueRouter& router) {
  return std::make_unique<GrpcMetadataLink>(router);
}

}  // namespace mx::delivery
