// cidr_test.cc — network matching for mynetworks.
#include <gtest/gtest.h>

#include "mx/common/cidr.h"

namespace mx {
namespace {

TEST(Cidr, MatchesPrefixes) {
  auto list = CidrList::Parse({"127.0.0.0/8", "192.0.2.128/25", "2001:db8::/32"});
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->Contains("127.1.2.3"));
  EXPECT_TRUE(list->Contains("192.0.2.200"));
  EXPECT_FALSE(list->Contains("192.0.2.1"));
  EXPECT_TRUE(list->Contains("2001:db8::1"));
  EXPECT_FALSE(list->Contains("2001:db9::1"));
  EXPECT_TRUE(list->Contains("::ffff:127.0.0.1"));  // v4-mapped
  EXPECT_FALSE(list->Contains("not-an-ip"));
}

TEST(Cidr, RejectsGarbage) {
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/33").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0/8").ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0/x").ok());
}

}  // namespace
}  // namespace mx
