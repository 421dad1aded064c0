// permits_test.cc — connection slots and message rates of the queue leader.
#include "permits.h"

#include <gtest/gtest.h>

namespace mx::queue {
namespace {

constexpr int64_t kSec = 1'000'000;

TEST(Permits, SlotsUpToTheLimitAndFreeOnRelease) {
  Permits p;
  int64_t retry = 0;
  const std::vector<Permits::Ask> two{{"dest:example.com", 2}};
  EXPECT_TRUE(p.Acquire("w1#1", two, 10 * kSec, 0, &retry));
  EXPECT_TRUE(p.Acquire("w2#1", two, 10 * kSec, 0, &retry));
  EXPECT_FALSE(p.Acquire("w3#1", two, 10 * kSec, kSec, &retry));
  EXPECT_EQ(retry, 9 * kSec);  // the first hold expires then unless renewed
  EXPECT_EQ(p.Holders("dest:example.com", kSec), 2u);
  p.Release("w1#1");
  EXPECT_TRUE(p.Acquire("w3#1", two, 10 * kSec, kSec, &retry));
  EXPECT_TRUE(p.Acquire("w3#1", two, 10 * kSec, kSec, &retry));  // holding already: a renewal
  EXPECT_EQ(p.Holders("dest:example.com", kSec), 2u);
}

TEST(Permits, AllKeysOrNone) {
  Permits p;
  int64_t retry = 0;
  EXPECT_TRUE(p.Acquire("a", {{"host:mx1", 1}}, 10 * kSec, 0, &retry));
  // The destination has room, the host lock does not: nothing is taken.
  EXPECT_FALSE(p.Acquire("b", {{"dest:d", 5}, {"host:mx1", 1}}, 10 * kSec, 0, &retry));
  EXPECT_EQ(p.Holders("dest:d", 0), 0u);
  EXPECT_TRUE(p.Acquire("c", {{"dest:d", 5}, {"host:mx2", 1}}, 10 * kSec, 0, &retry));
  EXPECT_EQ(p.Holders("dest:d", 0), 1u);
  EXPECT_TRUE(p.Acquire("d", {{"dest:unlimited", 0}}, 10 * kSec, 0, &retry));
  EXPECT_EQ(p.Holders("dest:unlimited", 0), 0u);  // limit 0 takes no slot
}

TEST(Permits, HoldsExpireWithoutRenewal) {
  Permits p;
  int64_t retry = 0;
  const std::vector<Permits::Ask> one{{"host:mx", 1}};
  EXPECT_TRUE(p.Acquire("a", one, 10 * kSec, 0, &retry));
  p.Renew("a", one, 10 * kSec, 8 * kSec);
  EXPECT_FALSE(p.Acquire("b", one, 10 * kSec, 12 * kSec, &retry));  // renewed at 8 s: lives to 18 s
  EXPECT_TRUE(p.Acquire("b", one, 10 * kSec, 18 * kSec, &retry));   // a crashed worker's slot comes back
}

TEST(Permits, NewLeaderGrantsNothingNewDuringGraceButTakesOverRenewals) {
  Permits p;
  int64_t retry = 0;
  const std::vector<Permits::Ask> one{{"host:mx", 1}};
  p.BecameLeader(100 * kSec, 10 * kSec);
  EXPECT_FALSE(p.Acquire("new", one, 10 * kSec, 101 * kSec, &retry));
  EXPECT_EQ(retry, 9 * kSec);
  p.Renew("old", one, 10 * kSec, 102 * kSec);  // a connection the previous leader allowed
  EXPECT_EQ(p.Holders("host:mx", 102 * kSec), 1u);
  EXPECT_FALSE(p.Acquire("new", one, 10 * kSec, 110 * kSec, &retry));  // after grace, still held
  p.Release("old");
  EXPECT_TRUE(p.Acquire("new", one, 10 * kSec, 110 * kSec, &retry));
}

TEST(Permits, RateSpacesMessagesEvenly) {
  Permits p;
  int64_t retry = 0;
  EXPECT_TRUE(p.Rate("dest:d", 60, 60, 0, &retry));  // 60 per minute: one a second
  EXPECT_FALSE(p.Rate("dest:d", 60, 60, kSec / 2, &retry));
  EXPECT_EQ(retry, kSec / 2);
  EXPECT_TRUE(p.Rate("dest:d", 60, 60, kSec, &retry));
  EXPECT_TRUE(p.Rate("dest:other", 60, 60, kSec, &retry));  // keys are independent
  EXPECT_TRUE(p.Rate("dest:d", 0, 60, kSec, &retry));       // 0: no limit
  p.BecameLeader(10 * kSec, 5 * kSec);
  EXPECT_FALSE(p.Rate("dest:d", 60, 60, 11 * kSec, &retry));
  EXPECT_TRUE(p.Rate("dest:d", 60, 60, 15 * kSec, &retry));
}

TEST(Permits, RatePeriodsFromSecondsToHours) {
  Permits p;
  int64_t retry = 0;
  EXPECT_TRUE(p.Rate("site:s", 10, 1, 0, &retry));  // 10/s: 100 ms apart
  EXPECT_FALSE(p.Rate("site:s", 10, 1, 99'000, &retry));
  EXPECT_EQ(retry, 1'000);
  EXPECT_TRUE(p.Rate("site:s", 10, 1, 100'000, &retry));
  EXPECT_TRUE(p.Rate("site:h", 3000, 3600, 0, &retry));  // 3000/h: 1.2 s apart
  EXPECT_FALSE(p.Rate("site:h", 3000, 3600, kSec, &retry));
  EXPECT_EQ(retry, kSec / 5);
  EXPECT_TRUE(p.Rate("site:h", 3000, 3600, 1'200'000, &retry));
}

}  // namespace
}  // namespace mx::queue
