// metadata_client.cc — the callback-API calls to the metadata shard's leader.
#include "mx/queue/metadata_client.h"

#include <memory>

namespace mx::queue {
namespace {

// What one callback call keeps alive until its completion runs.
template <typename Req, typename Resp>
struct Pending {
  grpc::ClientContext ctx;
  Req req;
  Resp resp;
  std::string address;
};

template <typename Req, typename Resp>
std::shared_ptr<Pending<Req, Resp>> Start(QueueRouter& router, Req req, std::chrono::milliseconds deadline,
                                          v1::Metadata::Stub** stub) {
  auto p = std::make_shared<Pending<Req, Resp>>();
  p->req = std::move(req);
  p->ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  auto target = router.Leader(kMetadataShard);
  p->address = target.address;
  *stub = target.metadata;
  return p;
}

}  // namespace

void MetadataClient::Permit(v1::PermitRequest req, std::chrono::milliseconds deadline,
                            std::function<void(const grpc::Status&, const v1::PermitResponse&)> done) {
  v1::Metadata::Stub* stub = nullptr;
  auto p = Start<v1::PermitRequest, v1::PermitResponse>(router_, std::move(req), deadline, &stub);
  stub->async()->Permit(&p->ctx, &p->req, &p->resp, [this, p, done = std::move(done)](grpc::Status s) {
    router_.Observe(kMetadataShard, p->address, p->ctx, s);
    done(s, p->resp);
  });
}

void MetadataClient::SetSiteStatus(v1::SetSiteStatusRequest req, std::chrono::milliseconds deadline,
                                   std::function<void(const grpc::Status&)> done) {
  v1::Metadata::Stub* stub = nullptr;
  auto p = Start<v1::SetSiteStatusRequest, v1::SetSiteStatusResponse>(router_, std::move(req), deadline, &stub);
  stub->async()->SetSiteStatus(&p->ctx, &p->req, &p->resp, [this, p, done = std::move(done)](grpc::Status s) {
    router_.Observe(kMetadataShard, p->address, p->ctx, s);
    done(s);
  });
}

void MetadataClient::Suppress(v1::SuppressRequest req, std::chrono::milliseconds deadline,
                              std::function<void(const grpc::Status&, const v1::SuppressResponse&)> done) {
  v1::Metadata::Stub* stub = nullptr;
  auto p = Start<v1::SuppressRequest, v1::SuppressResponse>(router_, std::move(req), deadline, &stub);
  stub->async()->Suppress(&p->ctx, &p->req, &p->resp, [this, p, done = std::move(done)](grpc::Status s) {
    router_.Observe(kMetadataShard, p->address, p->ctx, s);
    done(s, p->resp);
  });
}

}  // namespace mx::queue
