// rfc5322_test.cc — dates and header facts.
#include <gtest/gtest.h>

#include "mx/common/rfc5322.h"

namespace mx {
namespace {

TEST(Rfc5322, Date) {
  EXPECT_EQ(Rfc5322Date(1'700'000'000'000'000), "Tue, 14 Nov 2023 22:13:20 +0000");
}

TEST(Rfc5322, ScanHeaders) {
  std::string m =
      "Received: from a\r\n\tby b\r\nReceived: from c\r\nMessage-ID:  <x@y>\r\nPrecedence: bulk\r\n\r\nbody\r\n";
  auto f = ScanHeaders(m);
  EXPECT_TRUE(f.has_message_id);
  EXPECT_EQ(f.message_id, "<x@y>");
  EXPECT_EQ(f.precedence_class, -60);
  EXPECT_EQ(f.received_count, 2);
  EXPECT_EQ(m.substr(f.header_bytes), "body\r\n");
}

TEST(Rfc5322, NoHeaders) {
  auto f = ScanHeaders("just text\r\n");
  EXPECT_FALSE(f.has_message_id);
  EXPECT_EQ(f.header_bytes, 0u);
}

}  // namespace
}  // namespace mx
