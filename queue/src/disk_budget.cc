// disk_budget.cc — see disk_budget.h.
#include "disk_budget.h"

#include <sys/statvfs.h>

#include <utility>

namespace mx::queue {

namespace {
constexpr int64_t kRefreshUs = 1'000'000;
constexpr int64_t kRefusingRefreshUs = 100'000;
}  // namespace

DiskBudget::DiskBudget(std::string dir, uint64_t min_free, const Clock& clock, Unflushed unflushed,
                       FreeBytes free_bytes)
    : dir_(std::move(dir)),
      min_free_(min_free),
      clock_(clock),
      unflushed_(std::move(unflushed)),
      free_bytes_(std::move(free_bytes)) {}

uint64_t DiskBudget::StatvfsFree(const std::string& dir) {
  struct statvfs v {};
  if (statvfs(dir.c_str(), &v) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

void DiskBudget::RefreshLocked(int64_t now_us) {
  refreshed_us_ = now_us;
  const uint64_t fs_free = free_bytes_(dir_);
  const uint64_t pending = unflushed_ ? unflushed_() : 0;
  free_ = fs_free == UINT64_MAX ? UINT64_MAX : (fs_free > pending ? fs_free - pending : 0);
  taken_ = 0;
}

Status DiskBudget::Admit(uint64_t bytes) {
  if (min_free_ == 0) return Status::Ok();
  std::lock_guard lock(mu_);
  const int64_t now = clock_.NowUnixMicros();
  const int64_t every = refusing_ ? kRefusingRefreshUs : kRefreshUs;
  if (now - refreshed_us_ >= every || now < refreshed_us_) RefreshLocked(now);
  const uint64_t left = free_ > taken_ ? free_ - taken_ : 0;
  refusing_ = left < min_free_ || bytes > left - min_free_;
  if (refusing_) {
    return Status(Code::kResourceExhausted, std::to_string(left >> 20) +
                                                " MiB free on the queue disk (less unwritten data), below "
                                                "queue.min_free_disk");
  }
  taken_ += bytes;
  return Status::Ok();
}

uint64_t DiskBudget::estimate() const {
  std::lock_guard lock(mu_);
  return free_ > taken_ ? free_ - taken_ : 0;
}

}  // namespace mx::queue
