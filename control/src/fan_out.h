// fan_out.h — one admin request sent to every queue shard at once.
//
// An operator asking `mxctl mailq` while one shard is down wants what the
// other shards hold, now, and to be told which shard is missing — not an
// error after a minute. FanOut runs one call per shard on its own thread and
// waits for all of them; every call is given the same deadline and must pass
// it on (as its gRPC deadline and its retry bound), so FanOut returns by then.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mx::control {

using Deadline = std::chrono::system_clock::time_point;

// When a fan-out answers: the caller's gRPC deadline less a margin to send
// the answer back (a tenth of the time left, at least 200 ms and at most 1 s);
// `fallback` from now when the caller set no deadline (gRPC's infinite one).
Deadline FanOutDeadline(Deadline caller, std::chrono::milliseconds fallback,
                        Deadline now = std::chrono::system_clock::now());

// Runs call(shard, deadline) for shards 0..shards-1 at once and returns
// their statuses in shard order.
std::vector<grpc::Status> FanOut(uint32_t shards, Deadline deadline,
                                 const std::function<grpc::Status(uint32_t shard, Deadline deadline)>& call);

// "shard 1: <error>; shard 3: <error>" for the shards whose status failed.
std::string DescribeFailures(const std::vector<grpc::Status>& statuses);

}  // namespace mx::control
