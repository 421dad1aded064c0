// suppressions_test.cc — the ingress copy of the suppression list: pages of
// the change log add and remove addresses (case-insensitively) and advance
// the follower's position.
#include "suppressions.h"

#include <gtest/gtest.h>

namespace mx::ingress {
namespace {

v1::ListSuppressionsResponse Page(const std::vector<std::tuple<std::string, uint64_t, bool>>& entries) {
  v1::ListSuppressionsResponse p;
  for (const auto& [address, seq, removed] : entries) {
    auto* e = p.add_entries();
    e->set_address(address);
    e->set_seq(seq);
    e->set_removed(removed);
  }
  return p;
}

TEST(SuppressionSetTest, PagesAddAndRemoveInOrder) {
  SuppressionSet s;
  EXPECT_FALSE(s.Contains("a@x.test"));
  s.Apply(Page({{"a@x.test", 1, false}, {"b@x.test", 2, false}}));
  EXPECT_TRUE(s.Contains("a@x.test"));
  EXPECT_TRUE(s.Contains("A@X.Test"));
  EXPECT_FALSE(s.Contains("c@x.test"));
  EXPECT_EQ(s.seq(), 2u);
  EXPECT_EQ(s.size(), 2u);
  s.Apply(Page({{"a@x.test", 3, true}}));
  EXPECT_FALSE(s.Contains("a@x.test"));
  EXPECT_TRUE(s.Contains("b@x.test"));
  EXPECT_EQ(s.seq(), 3u);
  s.Apply(Page({}));  // an empty page keeps the position
  EXPECT_EQ(s.seq(), 3u);
}

}  // namespace
}  // namespace mx::ingress
