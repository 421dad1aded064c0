// shard_spread.h — which shard new mail starts from: the same one for a run of
// messages, then the next.
//
// Messages that reach a queue shard together share its EnqueueBatch calls,
// its Raft entries (one log write, fsync, AppendEntries and apply on every
// replica for the lot) and later delivery's Pull leases and Acks. Picking the
// shard by the qid's hash spreads each moment's messages over every shard, so
// with S shards each gets 1/S of them: S times the entries and calls for the
// same mail, on the same machines. Instead, an ingress sends a run of up to
// kRunMessages messages, or what arrives within kRunInterval, to one shard,
// then moves on to the next: within a few seconds every shard gets its share, and
// each moment's messages travel together.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

namespace mx::ingress {

class ShardSpread {
 public:
  static constexpr uint32_t kRunMessages = 256;
  static constexpr std::chrono::milliseconds kRunInterval{100};

  explicit ShardSpread(uint32_t first = 0) : current_(first) {}

  // The shard (of n) the next message starts from.
  uint32_t Next(uint32_t n, std::chrono::steady_clock::time_point now) {
    std::lock_guard lock(mu_);
    if (taken_ >= kRunMessages || now - since_ >= kRunInterval) {
      current_ = (current_ + 1) % n;
      taken_ = 0;
      since_ = now;
    }
    ++taken_;
    return current_ % n;
  }

 private:
  std::mutex mu_;
  uint32_t current_;
  uint32_t taken_ = kRunMessages;  // the first message starts a run
  std::chrono::steady_clock::time_point since_{};
};

}  // namespace mx::ingress
