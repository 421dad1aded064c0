// bounce_class_test.cc — every reply of the corpus (real-world wording,
// tests/unit/delivery/data/bounce_corpus.txt) gets its expected class.
#include "bounce_class.h"

#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "../golden.h"

namespace mx::delivery {
namespace {

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  return s;
}

TEST(BounceClass, CorpusOfRealWorldReplies) {
  std::istringstream in(test::ReadFile(test::DataPath("delivery/data/bounce_corpus.txt")));
  std::map<std::string, int> per_class;
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    auto a = line.find('|'), b = line.find('|', a + 1);
    ASSERT_NE(b, std::string::npos) << line;
    const std::string want = Trimmed(line.substr(0, a));
    std::string status = Trimmed(line.substr(a + 1, b - a - 1));
    if (status == "-") status.clear();
    const std::string reply = Trimmed(line.substr(b + 1));
    EXPECT_EQ(BounceClassName(ClassifyReply(reply, status)), want) << reply;
    ++per_class[want];
    ++n;
  }
  EXPECT_GE(n, 50);
  // Every class is in the corpus.
  for (const char* c : {"invalid_recipient", "bad_domain", "spam_block", "content", "policy", "quota", "no_answer",
                        "expired", "other"}) {
    EXPECT_GT(per_class[c], 0) << c;
  }
}

TEST(BounceClass, TheCodeDecidesWhenTheTextSaysNothing) {
  EXPECT_EQ(ClassifyReply("550 5.1.1 nope", ""), BounceClass::kInvalidRecipient);
  EXPECT_EQ(ClassifyReply("550 5.1.2 nope", ""), BounceClass::kBadDomain);
  EXPECT_EQ(ClassifyReply("552 5.2.2 nope", ""), BounceClass::kQuota);
  EXPECT_EQ(ClassifyReply("554 5.6.1 nope", ""), BounceClass::kContent);
  EXPECT_EQ(ClassifyReply("550 5.7.1 nope", ""), BounceClass::kPolicy);
  EXPECT_EQ(ClassifyReply("451 4.4.2 nope", ""), BounceClass::kNoAnswer);
  EXPECT_EQ(ClassifyReply("nope", "5.1.1"), BounceClass::kInvalidRecipient);  // the settled status
  EXPECT_EQ(ClassifyReply("550 nope", ""), BounceClass::kOther);
  EXPECT_EQ(ClassifyReply("", ""), BounceClass::kOther);
  EXPECT_EQ(ClassifyReply("550 5.x", ""), BounceClass::kOther);  // not an enhanced code
}

}  // namespace
}  // namespace mx::delivery
