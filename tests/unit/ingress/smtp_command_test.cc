// smtp_command_test.cc — command and path parsing.
#include <gtest/gtest.h>

#include "smtp_command.h"

namespace mx::ingress {
namespace {

TEST(ParseCommand, VerbsAreCaseInsensitive) {
  auto c = ParseCommand("mail FROM:<a@b.test>");
  EXPECT_EQ(c.verb, Verb::kMail);
  EXPECT_EQ(c.arg, "FROM:<a@b.test>");
  EXPECT_EQ(ParseCommand("QuIt").verb, Verb::kQuit);
  EXPECT_EQ(ParseCommand("XYZZY foo").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("").verb, Verb::kUnknown);
}

TEST(ParsePathArg, NullSenderAndParams) {
  auto p = ParsePathArg("FROM:<> SIZE=100 BODY=8BITMIME", "FROM", true);
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.address, "");
  ASSERT_EQ(p.params.size(), 2u);
  EXPECT_EQ(p.params[0].first, "SIZE");
  EXPECT_EQ(p.params[0].second, "100");
}

TEST(ParsePathArg, ToleratesSpaceAfterColonAndSourceRoutes) {
  auto p = ParsePathArg("FROM: <@relay.test:user@example.test>", "FROM", true);
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.address, "user@example.test");
}

TEST(ParsePathArg, RejectsBadAddresses) {
  EXPECT_EQ(ParsePathArg("TO:<>", "TO", false).error, "501 5.1.3 Bad recipient address syntax");
  EXPECT_EQ(ParsePathArg("TO:<no-at-sign>", "TO", false).error, "501 5.1.3 Bad recipient address syntax");
  EXPECT_EQ(ParsePathArg("TO:<a@b..c>", "TO", false).error, "501 5.1.3 Bad recipient address syntax");
  EXPECT_EQ(ParsePathArg("TO:<a b@c>", "TO", false).error, "501 5.1.3 Bad recipient address syntax");
  EXPECT_EQ(ParsePathArg("FROM:<a@b", "FROM", true).error, "501 5.1.7 Bad sender address syntax");
  EXPECT_EQ(ParsePathArg("FRM:<a@b>", "FROM", true).error, "501 5.5.4 Syntax: MAIL FROM:<address>");
  EXPECT_TRUE(ParsePathArg("TO:<Postmaster>", "TO", false).ok);
  EXPECT_TRUE(ParsePathArg("TO:<user@[192.0.2.1]>", "TO", false).ok);
}

}  // namespace
}  // namespace mx::ingress
