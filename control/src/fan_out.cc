// fan_out.cc — every shard asked at once, answered by one deadline.
#include "fan_out.h"

#include <algorithm>
#include <future>

namespace mx::control {

Deadline FanOutDeadline(Deadline caller, std::chrono::milliseconds fallback, Deadline now) {
  using std::chrono::milliseconds;
  // gRPC reports "no deadline" as a time point centuries away.
  if (caller - now > std::chrono::hours(24 * 365)) return now + fallback;
  const auto left = std::chrono::duration_cast<milliseconds>(caller - now);
  const auto margin = std::clamp(left / 10, milliseconds(200), milliseconds(1000));
  return left > margin ? caller - margin : now;
}

std::vector<grpc::Status> FanOut(uint32_t shards, Deadline deadline,
                                 const std::function<grpc::Status(uint32_t, Deadline)>& call) {
  std::vector<std::future<grpc::Status>> pending;
  pending.reserve(shards);
  for (uint32_t shard = 0; shard < shards; ++shard) {
    pending.push_back(std::async(std::launch::async, [&call, shard, deadline] { return call(shard, deadline); }));
  }
  std::vector<grpc::Status> out;
  out.reserve(shards);
  for (auto& f : pending) out.push_back(f.get());
  return out;
}

std::string DescribeFailures(const std::vector<grpc::Status>& statuses) {
  std::string out;
  for (size_t shard = 0; shard < statuses.size(); ++shard) {
    if (statuses[shard].ok()) continue;
    out += (out.empty() ? "shard " : "; shard ") + std::to_string(shard) + ": " + statuses[shard].error_message();
  }
  return out;
}

}  // namespace mx::control
