// queue_link.h — the queue RPCs delivery makes besides its Pull streams,
// behind two small interfaces so each piece of the worker is unit-tested
// with a fake queue: QueueLink reaches a shard's leader (Ack, host status),
// MetadataLink the metadata shard's (permits, site status, suppressions).
//
// Every callback runs on a gRPC thread; a failed call reports its status
// and the link has already told the router (leader hints are followed).
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <functional>
#include <memory>

#include "mx/common/in_flight.h"
#include "mx/v1/queue.pb.h"

namespace mx::queue {
class QueueRouter;
}

namespace mx::delivery {

class QueueLink {
 public:
  virtual ~QueueLink() = default;
  // One more than the highest shard id known (it grows as shards are added).
  virtual uint32_t shards() const = 0;
  // Whether the shard holds or may hold mail (active or draining).
  virtual bool Serving(uint32_t shard) const = 0;
  // done(status, new_leader): new_leader when a different leader is now
  // known, so a retry at once makes sense.
  virtual void Ack(uint32_t shard, std::shared_ptr<const v1::AckRequest> req,
                   std::chrono::system_clock::time_point deadline,
                   std::function<void(const grpc::Status&, bool new_leader)> done) = 0;
  // Blocking, 2 s deadline.
  virtual grpc::Status ListHostStatus(uint32_t shard, v1::ListHostStatusResponse* resp) = 0;
};

class MetadataLink {
 public:
  virtual ~MetadataLink() = default;
  // 2 s deadline.
  virtual void Permit(v1::PermitRequest req,
                      std::function<void(const grpc::Status&, const v1::PermitResponse&)> done) = 0;
  virtual void SetSiteStatus(v1::SiteStatus status, std::function<void(const grpc::Status&)> done) = 0;
  // 5 s deadline.
  virtual void Suppress(v1::SuppressRequest req,
                        std::function<void(const grpc::Status&, const v1::SuppressResponse&)> done) = 0;
  // Blocking, 2 s deadline.
  virtual grpc::Status ListSiteStatus(v1::ListSiteStatusResponse* resp) = 0;
};

using mx::InFlightCalls;  // mx/common/in_flight.h

// Both over gRPC through router (which must outlive them).
std::unique_ptr<QueueLink> MakeGrpcQueueLink(queue::QueueRouter& router);
std::unique_ptr<MetadataLink> MakeGrpcMetadataLink(queue::QueueRouter& router);

}  // namespace mx::delivery
