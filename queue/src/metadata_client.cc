// metadata_client.cc — the callback-API calls to the metadata shard's leader.
#include "mx/queue/metadata_client.h"

#include <memory>

#include "mx/common/async_call.h"

namespace mx::queue {
namespace {

// One callback call to the leader as the router knows it: issue(stub, call,
// on_done) starts the RPC; done(status, response) runs after the router
// learnt from the answer.
template <typename Req, typename Resp, typename Issue, typename Done>
void CallAsync(QueueRouter& router, Req req, std::chrono::milliseconds deadline, Issue issue, Done done) {
  auto call = AsyncCall<Req, Resp>::WithDeadline(deadline);
  call->req = std::move(req);
  auto target = router.Leader(kMetadataShard);
  issue(target.metadata->async(), call.get(),
        [&router, call, address = target.address, done = std::move(done)](grpc::Status s) {
          router.Observe(kMetadataShard, address, call->ctx, s);
          done(s, call->resp);
        });
}

}  // namespace

void MetadataClient::Permit(v1::PermitRequest req, std::chrono::milliseconds deadline,
                            std::function<void(const grpc::Status&, const v1::PermitResponse&)> done) {
  using Call = AsyncCall<v1::PermitRequest, v1::PermitResponse>;
  CallAsync<v1::PermitRequest, v1::PermitResponse>(
      router_, std::move(req), deadline,
      [](auto* stub, Call* c, auto on_done) { stub->Permit(&c->ctx, &c->req, &c->resp, std::move(on_done)); },
      std::move(done));
}

void MetadataClient::SetSiteStatus(v1::SetSiteStatusRequest req, std::chrono::milliseconds deadline,
                                   std::function<void(const grpc::Status&)> done) {
  using Call = AsyncCall<v1::SetSiteStatusRequest, v1::SetSiteStatusResponse>;
  CallAsync<v1::SetSiteStatusRequest, v1::SetSiteStatusResponse>(
      router_, std::move(req), deadline,
      [](auto* stub, Call* c, auto on_done) { stub->SetSiteStatus(&c->ctx, &c->req, &c->resp, std::move(on_done)); },
      [done = std::move(done)](const grpc::Status& s, const v1::SetSiteStatusResponse&) { done(s); });
}

void MetadataClient::Suppress(v1::SuppressRequest req, std::chrono::milliseconds deadline,
                              std::function<void(const grpc::Status&, const v1::SuppressResponse&)> done) {
  using Call = AsyncCall<v1::SuppressRequest, v1::SuppressResponse>;
  CallAsync<v1::SuppressRequest, v1::SuppressResponse>(
      router_, std::move(req), deadline,
      [](auto* stub, Call* c, auto on_done) { stub->Suppress(&c->ctx, &c->req, &c->resp, std::move(on_done)); },
      std::move(done));
}

}  // namespace mx::queue
