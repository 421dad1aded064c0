// retry.cc — the exponential retry schedule.
#include "retry.h"

#include <algorithm>

namespace mx::queue {

int64_t RetryDelayUs(uint32_t attempts, int64_t min_us, int64_t max_us, double jitter) {
  int64_t d = min_us;
  for (uint32_t i = 0; i < attempts && d < max_us; ++i) d *= 2;
  d += static_cast<int64_t>(jitter * static_cast<double>(d));
  return std::min(d, max_us);
}

}  // namespace mx::queue
