// qid_test.cc — queue ids are 14 printable characters in time order.
#include <gtest/gtest.h>

#include "mx/common/clock.h"
#include "mx/common/qid.h"

namespace mx {
namespace {

TEST(Qid, TimeOrderedAndUniqueUnderAFrozenClock) {
  FakeClock clock;
  QidGenerator gen(clock, 42);
  std::string prev = gen.Next();
  for (int i = 0; i < 1000; ++i) {
    std::string next = gen.Next();
    ASSERT_EQ(next.size(), QidGenerator::kLength);
    ASSERT_LT(prev, next);  // strictly increasing even though the clock did not move
    prev = next;
  }
}

TEST(Qid, EncodesItsTime) {
  FakeClock clock(1'800'000'000'123'456);
  QidGenerator gen(clock, 7);
  EXPECT_EQ(QidGenerator::TimeOf(gen.Next()), 1'800'000'000'123'456);
  EXPECT_EQ(QidGenerator::TimeOf("short"), -1);
  EXPECT_EQ(QidGenerator::TimeOf("0123456789ab!d"), -1);
}

TEST(Qid, LaterTimeSortsLater) {
  FakeClock clock;
  QidGenerator a(clock, 999999), b(clock, 0);
  std::string first = a.Next();
  clock.Advance(std::chrono::microseconds(1));
  EXPECT_LT(first, b.Next());
}

}  // namespace
}  // namespace mx
