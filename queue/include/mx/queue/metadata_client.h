// metadata_client.h — how every component reaches the metadata shard
// (kMetadataShard: the node table, drain, policy, site status, suppressions
// and the delivery permits; mx.v1.Metadata in metadata.proto). Calls go to
// the shard's leader as the router knows it, follow a leader hint at once,
// and, within the call's total deadline, retry while the shard has no
// leader (an election). Thread-safe; the router must outlive the client.
#pragma once

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <thread>

#include "mx/queue/client.h"
#include "mx/v1/metadata.grpc.pb.h"

namespace mx::queue {

// How long a metadata call may take (outside the class: clang needs the
// default member initializers before they serve as a default argument).
struct MetadataDeadline {
  std::chrono::milliseconds per_call{5000};
  // Retries (UNAVAILABLE, DEADLINE_EXCEEDED) until this much has passed;
  // zero: one attempt (and one more at a new leader's hint).
  std::chrono::milliseconds total{0};
};

class MetadataClient {
 public:
  using Deadline = MetadataDeadline;

  explicit MetadataClient(QueueRouter& router) : router_(router) {}

  // A unary call, e.g. Call(&v1::Metadata::Stub::ListNodes, req, &resp).
  template <typename Req, typename Resp>
  grpc::Status Call(grpc::Status (v1::Metadata::Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Req& req,
                    Resp* resp, Deadline d = {}) {
    const auto give_up = std::chrono::steady_clock::now() + d.total;
    grpc::Status st;
    for (int attempt = 0;; ++attempt) {
      auto target = router_.Leader(kMetadataShard);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + d.per_call);
      st = (target.metadata->*method)(&ctx, req, resp);
      const bool new_leader = router_.Observe(kMetadataShard, target.address, ctx, st);
      const bool retryable =
          st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
      if (!retryable) return st;
      if (new_leader && attempt == 0) continue;  // the hint: once at once
      if (std::chrono::steady_clock::now() >= give_up) break;
      if (!new_leader)
        std::this_thread::sleep_for(std::chrono::milliseconds(std::min(1000, 100 << std::min(attempt, 4))));
    }
    if (d.total.count() == 0) return st;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the metadata shard has no reachable leader: " + st.error_message());
  }

  // Callback API, one attempt (delivery's permits and reports): done runs on
  // a gRPC thread.
  void Permit(v1::PermitRequest req, std::chrono::milliseconds deadline,
              std::function<void(const grpc::Status&, const v1::PermitResponse&)> done);
  void SetSiteStatus(v1::SetSiteStatusRequest req, std::chrono::milliseconds deadline,
                     std::function<void(const grpc::Status&)> done);
  void Suppress(v1::SuppressRequest req, std::chrono::milliseconds deadline,
                std::function<void(const grpc::Status&, const v1::SuppressResponse&)> done);

  QueueRouter& router() { return router_; }

 private:
  QueueRouter& router_;
};

}  // namespace mx::queue
