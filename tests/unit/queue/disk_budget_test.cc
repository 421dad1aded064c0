// disk_budget_test.cc — MinFreeBlocks: statvfs less unwritten data less what
// was admitted since the last look.
#include "disk_budget.h"

#include <gtest/gtest.h>

namespace mx::queue {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class StepClock final : public Clock {
 public:
  int64_t NowUnixMicros() const override { return now; }
  int64_t now = 1'000'000'000;
};

struct Disk {
  uint64_t free = 100 * kMiB;
  uint64_t memtables = 0;
  int looks = 0;
};

DiskBudget Make(Disk& d, StepClock& clock, uint64_t min_free) {
  return DiskBudget(
      "/q", min_free, clock, [&d] { return d.memtables; },
      [&d](const std::string& dir) {
        EXPECT_EQ(dir, "/q");
        ++d.looks;
        return d.free;
      });
}

TEST(DiskBudget, AdmittedBytesCountBeforeTheNextLook) {
  Disk d;
  StepClock clock;
  auto b = Make(d, clock, 64 * kMiB);
  // 100 MiB free, 64 MiB must stay: 36 MiB of admissions within one second.
  for (int i = 0; i < 36; ++i) ASSERT_TRUE(b.Admit(kMiB).ok()) << i;
  auto st = b.Admit(kMiB);
  EXPECT_EQ(st.code(), Code::kResourceExhausted);
  EXPECT_NE(st.message().find("below queue.min_free_disk"), std::string::npos);
  EXPECT_EQ(d.looks, 1);  // statvfs once, not per message
}

TEST(DiskBudget, UnflushedMemtablesCountAsWritten) {
  Disk d;
  d.memtables = 30 * kMiB;
  StepClock clock;
  auto b = Make(d, clock, 64 * kMiB);
  EXPECT_TRUE(b.Admit(5 * kMiB).ok());
  EXPECT_EQ(b.Admit(2 * kMiB).code(), Code::kResourceExhausted);  // 100 - 30 - 5 - 2 < 64
  EXPECT_EQ(b.estimate(), 65 * kMiB);
}

TEST(DiskBudget, RefusingLooksAgainSoonAndResumesWhenSpaceReturns) {
  Disk d;
  d.free = 60 * kMiB;
  StepClock clock;
  auto b = Make(d, clock, 64 * kMiB);
  EXPECT_FALSE(b.Admit(1).ok());
  d.free = 200 * kMiB;  // an operator made room
  clock.now += 50'000;
  EXPECT_FALSE(b.Admit(1).ok());  // not looked yet
  clock.now += 60'000;            // 110 ms: a refusing budget looks every 100 ms
  EXPECT_TRUE(b.Admit(1).ok());
  EXPECT_EQ(d.looks, 2);
  // Accepting again: the next look comes after a second.
  clock.now += 500'000;
  EXPECT_TRUE(b.Admit(kMiB).ok());
  EXPECT_EQ(d.looks, 2);
  clock.now += 600'000;
  d.free = 70 * kMiB;
  EXPECT_FALSE(b.Admit(10 * kMiB).ok());
  EXPECT_EQ(d.looks, 3);
}

TEST(DiskBudget, ZeroIsOffAndAnUnknownFileSystemIsNotFull) {
  Disk d;
  d.free = 0;
  StepClock clock;
  auto off = Make(d, clock, 0);
  EXPECT_TRUE(off.Admit(kMiB).ok());
  EXPECT_EQ(d.looks, 0);
  d.free = UINT64_MAX;  // statvfs failed
  auto unknown = Make(d, clock, 64 * kMiB);
  EXPECT_TRUE(unknown.Admit(kMiB).ok());
}

}  // namespace
}  // namespace mx::queue
