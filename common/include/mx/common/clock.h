// clock.h — injectable time source. Retry, backoff and leases take a Clock so
// tests drive time explicitly instead of sleeping.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace mx {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock microseconds since the Unix epoch.
  virtual int64_t NowUnixMicros() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t NowUnixMicros() const override {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  static SystemClock& Instance() {
    static SystemClock clock;
    return clock;
  }
};

// A clock that only moves when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_us = 1'700'000'000'000'000) : now_(start_us) {}
  int64_t NowUnixMicros() const override { return now_.load(); }
  void Advance(std::chrono::microseconds d) { now_ += d.count(); }
  void Set(int64_t us) { now_ = us; }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace mx
