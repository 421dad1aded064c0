// worker.h — a delivery worker: holds a Pull stream to each queue shard, delivers
// leased messages with the SMTP client, reports outcomes with Ack.
//
// Threads: one per Pull stream (blocking gRPC reads), the Asio io_context
// threads for SMTP and the c-ares thread for DNS. A message is acked once all
// its leased recipients have an outcome; credits go back to the stream then.
#pragma once

#include <memory>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/result.h"
#include "mx/delivery/resolver.h"

namespace mx::delivery {

class DeliveryWorker {
 public:
  virtual ~DeliveryWorker() = default;
  virtual void Stop() = 0;
  // mxctl drain: no new leases are asked for; deliveries in flight finish.
  // false: pull again.
  virtual void SetDraining(bool draining) = 0;
  virtual int64_t InFlight() const = 0;  // messages being delivered
};

Result<std::unique_ptr<DeliveryWorker>> StartDelivery(const Config& config, std::unique_ptr<Resolver> resolver,
                                                      const Clock& clock);

}  // namespace mx::delivery
