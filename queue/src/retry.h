// retry.h — when a deferred recipient is tried again.
#pragma once

#include <cstdint>

namespace mx::queue {

// The delay after `attempts` earlier failures: min_us doubled per attempt
// (MinQueueAge is the first step), plus jitter × the delay (the caller draws
// jitter from [0, 0.25) so that retries of a crowd spread out), never above
// max_us.
int64_t RetryDelayUs(uint32_t attempts, int64_t min_us, int64_t max_us, double jitter);

}  // namespace mx::queue
