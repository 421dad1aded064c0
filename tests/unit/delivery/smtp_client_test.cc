// smtp_client_test.cc — pure helpers of the SMTP client.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "smtp_client.h"

namespace mx::delivery {
namespace {

TEST(DotStuff, DoublesLeadingDotsAndTerminates) {
  EXPECT_EQ(DotStuff(".a\r\nb\r\n..c\r\n"), "..a\r\nb\r\n...c\r\n.\r\n");
  EXPECT_EQ(DotStuff("no final crlf"), "no final crlf\r\n.\r\n");
  EXPECT_EQ(DotStuff(""), ".\r\n");
  EXPECT_EQ(DotStuff("x\r\n.\r\n"), "x\r\n..\r\n.\r\n");
  EXPECT_EQ(DotStuff("a.b\n.\n\n.."), "a.b\n..\n\n...\r\n.\r\n");  // bare LF ends a line too
}

// The rule, byte by byte: a '.' at the start of a line (after '\n') is doubled.
TEST(DotStuff, AgreesWithTheByteRuleOnRandomBodies) {
  std::mt19937 rng(7);
  const std::string alphabet = "..\r\n\nab";
  for (int round = 0; round < 2000; ++round) {
    std::string body(rng() % 200, ' ');
    for (auto& c : body) c = alphabet[rng() % alphabet.size()];
    std::string want;
    bool line_start = true;
    for (char c : body) {
      if (line_start && c == '.') want.push_back('.');
      want.push_back(c);
      line_start = c == '\n';
    }
    if (!want.empty() && !line_start) want += "\r\n";
    want += ".\r\n";
    ASSERT_EQ(DotStuff(body), want) << "body: " << body;
  }
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
