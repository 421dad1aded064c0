// mta_sts_test.cc — MTA-STS records, policy files and MX patterns (RFC 8461
// 3.1, 3.2, 4.1), including the RFC's own examples.
#include "mx/delivery/mta_sts.h"

#include <gtest/gtest.h>

namespace mx::delivery {
namespace {

TEST(MtaStsTest, RecordsGiveTheirIdOnlyWhenValid) {
  EXPECT_EQ(ParseStsRecord("v=STSv1; id=20160831085700Z;"), "20160831085700Z");  // RFC 8461 3.1
  EXPECT_EQ(ParseStsRecord("v=STSv1;id=abc"), "abc");
  EXPECT_EQ(ParseStsRecord("v=STSv1; id=1; ext=whatever"), "1");
  EXPECT_FALSE(ParseStsRecord("id=1; v=STSv1"));                        // v first
  EXPECT_FALSE(ParseStsRecord("v=STSv2; id=1"));                        // another version
  EXPECT_FALSE(ParseStsRecord("v=STSv1;"));                             // no id
  EXPECT_FALSE(ParseStsRecord("v=STSv1; id=a-b"));                      // id is alphanumeric
  EXPECT_FALSE(ParseStsRecord("v=STSv1; id=" + std::string(33, 'a')));  // at most 32
}

TEST(MtaStsTest, ThePolicyFileOfTheRfcParses) {
  auto p = ParseStsPolicy(
      "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\n"
      "max_age: 604800\r\n");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->mode, StsPolicy::Mode::kEnforce);
  EXPECT_EQ(p->max_age_s, 604800);
  EXPECT_EQ(p->MxList(), "mail.example.com, *.example.net, backupmx.example.com");
  EXPECT_TRUE(p->Matches("mail.example.com"));
  EXPECT_TRUE(p->Matches("MX1.example.NET."));
  EXPECT_FALSE(p->Matches("example.net"));      // the wildcard needs a label
  EXPECT_FALSE(p->Matches("a.b.example.net"));  // and only one
  EXPECT_FALSE(p->Matches("mail.example.com.evil"));
  // LF line ends, extension keys, mode none without mx, a year at most.
  auto none = ParseStsPolicy("version: STSv1\nmode: none\nmax_age: 9999999999\nfuture_key: x\n");
  ASSERT_TRUE(none.ok()) << none.status().message();
  EXPECT_EQ(none->mode, StsPolicy::Mode::kNone);
  EXPECT_EQ(none->max_age_s, 31557600);
}

TEST(MtaStsTest, BadPolicyFilesSayWhatIsWrong) {
  const std::pair<const char*, const char*> cases[] = {
      {"mode: enforce\nmx: a\nmax_age: 1\n", "no version"},
      {"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "version"},
      {"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode 'strict'"},
      {"version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"},
      {"version: STSv1\nmode: testing\nmx: a\n", "no max_age"},
      {"version: STSv1\nmode: testing\nmx: a\nmax_age: soon\n", "max_age"},
      {"<html>not a policy</html>\n", "key: value"},
  };
  for (const auto& [text, why] : cases) {
    auto p = ParseStsPolicy(text);
    ASSERT_FALSE(p.ok()) << text;
    EXPECT_NE(p.status().message().find(why), std::string::npos) << text << ": " << p.status().message();
  }
}

}  // namespace
}  // namespace mx::delivery
