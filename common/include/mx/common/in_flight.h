// in_flight.h — calls whose callbacks still touch their caller, counted so
// that a Stop() can wait for them (each has a deadline) before what they
// post into or write to goes away. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace mx {

class InFlightCalls {
 public:
  void Begin() {
    std::lock_guard lock(mu_);
    ++n_;
  }
  void End() {
    std::lock_guard lock(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  // False when some are still outstanding after max.
  bool WaitIdle(std::chrono::milliseconds max) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, max, [&] { return n_ == 0; });
  }
  int64_t count() const {
    std::lock_guard lock(mu_);
    return n_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t n_ = 0;
};

}  // namespace mx
