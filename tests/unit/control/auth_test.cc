// auth_test.cc — the admin token file: roles, and every mistake refused with
// file:line. (Checking calls needs a real gRPC server: tests/functional.)
#include "mx/control/auth.h"

#include <gtest/gtest.h>

namespace mx::control {
namespace {

std::string ParseError(std::string_view text) {
  auto r = AdminAuth::Parse(text, "tokens");
  return r.ok() ? "" : r.status().message();
}

TEST(AdminAuth, ParsesNamesRolesAndTokens) {
  auto a = AdminAuth::Parse(
      "# who role token\n\nalice operator 0123456789abcdef0123\nbob read "
      "abcdefabcdefabcdefabcdef\n",
      "tokens");
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->size(), 2u);
  EXPECT_FALSE(a->open());
  EXPECT_TRUE(AdminAuth::Open().open());
}

TEST(AdminAuth, RefusesMistakesWithFileAndLine) {
  EXPECT_EQ(ParseError("alice operator\n"), "tokens:1: expected '<name> <role> <token>'");
  EXPECT_EQ(ParseError("alice root 0123456789abcdef0123\n"), "tokens:1: unknown role 'root' (read or operator)");
  EXPECT_EQ(ParseError("alice read short\n"), "tokens:1: token of 'alice' is shorter than 20");
  EXPECT_EQ(ParseError("a read 0123456789abcdef0123\na operator abcdefabcdefabcdefabcd\n"),
            "tokens:2: duplicate name 'a'");
  EXPECT_EQ(ParseError("a read 0123456789abcdef0123\nb operator 0123456789abcdef0123\n"),
            "tokens:2: token of 'b' is also 'a''s");
  EXPECT_EQ(ParseError("a read 0123456789abcdef0123 extra\n"), "tokens:1: a token has no spaces");
  EXPECT_EQ(ParseError("# nothing\n"), "tokens: no tokens");
}

TEST(AdminAuth, LoadNeedsATokenFileUnlessOpen) {
  ControlConfig c;
  EXPECT_EQ(AdminAuth::Load(c, ".").status().message(),
            "control.admin_tokens_file is required (or control.auth: none to leave the admin API open)");
  c.auth = "none";
  EXPECT_TRUE(AdminAuth::Load(c, ".")->open());
  c.auth = "tokens";
  c.admin_tokens_file = "/nonexistent/tokens";
  EXPECT_EQ(AdminAuth::Load(c, ".").status().message(),
            "control.admin_tokens_file: /nonexistent/tokens: cannot read map file");
}

}  // namespace
}  // namespace mx::control
