// mta_sts_test.cc — MTA-STS records, policy files and MX patterns (RFC 8461
// 3.1, 3.2, 4.1), including the RFC's own examples; TLSA answers for DANE.
#include "mta_sts.h"

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

// A TLSA answer as a resolver sends it: the question, then a compressed
// owner name pointing at it, and one "3 1 1" record.
TEST(DaneTest, TlsaRecordsAreReadFromARawAnswer) {
  std::string msg("\x12\x34\x81\xa0\x00\x01\x00\x02\x00\x00\x00\x00", 12);  // AD set, 2 answers
  const std::string qname("\x03_25\x04_tcp\x02mx\x04test\x00", 18);
  msg += qname + std::string("\x00\x34\x00\x01", 4);
  auto rr = [](const std::string& rdata) {
    std::string r("\xc0\x0c\x00\x34\x00\x01\x00\x00\x0e\x10", 10);
    r += static_cast<char>(rdata.size() >> 8);
    r += static_cast<char>(rdata.size() & 0xff);
    return r + rdata;
  };
  msg += rr(std::string("\x03\x01\x01", 3) + std::string(32, '\xab'));
  msg += rr(std::string("\x02\x00\x02", 3) + std::string(64, '\x01'));
  auto recs = ParseTlsaAnswer(reinterpret_cast<const unsigned char*>(msg.data()), static_cast<int>(msg.size()));
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].usage, 3);
  EXPECT_EQ(recs[0].selector, 1);
  EXPECT_EQ(recs[0].mtype, 1);
  EXPECT_EQ(recs[0].data, std::string(32, '\xab'));
  EXPECT_EQ(recs[1].usage, 2);
  EXPECT_EQ(recs[1].mtype, 2);
  EXPECT_EQ(recs[1].data.size(), 64u);
  // Cut short anywhere: what was whole is kept, nothing is read past the end.
  for (size_t n = 0; n < msg.size(); ++n) {
    auto part = ParseTlsaAnswer(reinterpret_cast<const unsigned char*>(msg.data()), static_cast<int>(n));
    EXPECT_LE(part.size(), 2u);
  }
}

}  // namespace
}  // namespace mx::delivery
