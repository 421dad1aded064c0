// inject_test.cc — the injection API's pieces without a server: token
// files, template rendering, and the messages templates make (headers,
// MIME structure, encoded subjects, header injection refused).
#include "inject.h"

#include <gtest/gtest.h>

namespace mx::ingress {
namespace {

TEST(InjectTest, TokenFilesAreStrict) {
  auto t = ParseInjectTokens("# apps\nnewsletter 0123456789abcdef0123\nbilling  fedcba9876543210fedc  # ok\n", "f");
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->at("0123456789abcdef0123"), "newsletter");
  EXPECT_EQ(t->at("fedcba9876543210fedc"), "billing");
  EXPECT_NE(ParseInjectTokens("app short\n", "f").status().message().find("f:1: a token needs at least 20"),
            std::string::npos);
  EXPECT_NE(ParseInjectTokens("a 0123456789abcdef0123\nb 0123456789abcdef0123\n", "f")
                .status()
                .message()
                .find("f:2: names and tokens must be unique"),
            std::string::npos);
  EXPECT_NE(ParseInjectTokens("a b c\n", "f").status().message().find("f:1: expected"), std::string::npos);
  EXPECT_FALSE(ParseInjectTokens("# nothing\n", "f").ok());
}

TEST(InjectTest, TemplatesRenderEveryVariableOrSayWhichIsMissing) {
  std::map<std::string, std::string> vars{{"name", "Ann"}, {"code", "42"}};
  EXPECT_EQ(*RenderTemplate("Hi {{name}}, code {{ code }}.", vars), "Hi Ann, code 42.");
  EXPECT_EQ(*RenderTemplate("no variables", vars), "no variables");
  auto missing = RenderTemplate("Hi {{nmae}}", vars);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().message(), "the variable 'nmae' has no value");
  EXPECT_FALSE(RenderTemplate("Hi {{name", vars).ok());
}

TEST(InjectTest, ATemplateMakesAPlainOrAlternativeMessage) {
  v1::InjectTemplate t;
  t.set_from("News <news@example.com>");
  t.set_subject("Hello {{name}}");
  t.set_text("Dear {{name}},\nyour code is {{code}}.\n");
  (*t.mutable_headers())["List-Unsubscribe"] = "<https://example.com/u/{{id}}>";
  std::map<std::string, std::string> vars{{"name", "Ann"}, {"code", "42"}, {"id", "7"}, {"to", "ann@example.net"}};
  auto m = BuildTemplateMessage(t, vars, "=_b", 1'800'000'000'000'000);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(*m,
            "From: News <news@example.com>\r\nTo: ann@example.net\r\nSubject: Hello Ann\r\n"
            "Date: Fri, 15 Jan 2027 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "List-Unsubscribe: <https://example.com/u/7>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            "Dear Ann,\r\nyour code is 42.\r\n");
  t.set_html("<p>Dear {{name}}</p>");
  t.set_subject("Grüße, {{name}}");
  m = BuildTemplateMessage(t, vars, "=_b", 1'800'000'000'000'000);
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_NE(m->find("Subject: =?UTF-8?B?R3LDvMOfZSwgQW5u?=\r\n"), std::string::npos) << *m;
  EXPECT_NE(m->find("Content-Type: multipart/alternative; boundary=\"=_b\"\r\n\r\n--=_b\r\n"
                    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\nDear Ann,"),
            std::string::npos)
      << *m;
  EXPECT_NE(m->find("--=_b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                    "<p>Dear Ann</p>\r\n--=_b--\r\n"),
            std::string::npos)
      << *m;
}

TEST(InjectTest, VariablesCannotAddHeadersAndTemplatesCannotOverrideTheirOwn) {
  v1::InjectTemplate t;
  t.set_from("news@example.com");
  t.set_subject("Hi {{name}}");
  t.set_text("x");
  auto bad = BuildTemplateMessage(t, {{"name", "Ann\r\nBcc: victim@example.org"}}, "b", 0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "template.subject: a header value may not contain line breaks");
  (*t.mutable_headers())["Subject"] = "again";
  bad = BuildTemplateMessage(t, {{"name", "Ann"}}, "b", 0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "template.headers[Subject]: set by the template itself");
  t.clear_headers();
  t.set_text(std::string(1200, 'x'));
  bad = BuildTemplateMessage(t, {{"name", "Ann"}}, "b", 0);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("template.text: a line is longer than 998"), std::string::npos);
  t.set_text("x");
  t.clear_from();
  EXPECT_EQ(BuildTemplateMessage(t, {}, "b", 0).status().message(), "template.from: required");
}

}  // namespace
}  // namespace mx::ingress
