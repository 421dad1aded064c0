// smtp_client_test.cc — pure helpers of the SMTP client.
#include <gtest/gtest.h>

#include "smtp_client.h"

namespace mx::delivery {
namespace {

TEST(DotStuff, DoublesLeadingDotsAndTerminates) {
  EXPECT_EQ(DotStuff(".a\r\nb\r\n..c\r\n"), "..a\r\nb\r\n...c\r\n.\r\n");
  EXPECT_EQ(DotStuff("no final crlf"), "no final crlf\r\n.\r\n");
  EXPECT_EQ(DotStuff(""), ".\r\n");
  EXPECT_EQ(DotStuff("x\r\n.\r\n"), "x\r\n..\r\n.\r\n");
}

TEST(EnhancedCode, Parses) {
  EXPECT_EQ(EnhancedCode("5.1.1 <x>: unknown"), "5.1.1");
  EXPECT_EQ(EnhancedCode("4.7.28 rate limited"), "4.7.28");
  EXPECT_EQ(EnhancedCode("2.0.0"), "2.0.0");
  EXPECT_EQ(EnhancedCode("Ok queued"), "");
  EXPECT_EQ(EnhancedCode("3.1.1 nope"), "");
  EXPECT_EQ(EnhancedCode("5.1.1x"), "");
}

}  // namespace
}  // namespace mx::delivery
