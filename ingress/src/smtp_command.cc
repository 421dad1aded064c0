// smtp_command.cc — RFC 5321 command and path parsing.
#include "smtp_command.h"

#include <cctype>

#include "mx/common/address.h"

namespace mx::ingress {
namespace {

struct VerbName {
  const char* name;
  Verb verb;
};
constexpr VerbName kVerbs[] = {
    {"HELO", Verb::kHelo}, {"EHLO", Verb::kEhlo}, {"MAIL", Verb::kMail}, {"RCPT", Verb::kRcpt},
    {"DATA", Verb::kData}, {"RSET", Verb::kRset}, {"NOOP", Verb::kNoop}, {"QUIT", Verb::kQuit},
    {"VRFY", Verb::kVrfy}, {"EXPN", Verb::kExpn}, {"HELP", Verb::kHelp}, {"STARTTLS", Verb::kStartTls},
    {"AUTH", Verb::kAuth}, {"BDAT", Verb::kBdat}, {"ETRN", Verb::kEtrn},
};

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

// A mailbox we are willing to queue: printable ASCII/UTF-8, no spaces or
// brackets, one '@' with a non-empty local part and a plausible domain.
bool ValidMailbox(std::string_view a) {
  if (a.empty() || a.size() > 254) return false;
  for (unsigned char c : a) {
    if (c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' || c == '\\') {
      return false;
    }
  }
  auto at = a.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 >= a.size()) return false;
  auto domain = a.substr(at + 1);
  if (domain.front() == '[') return domain.back() == ']';  // address literal
  if (domain.front() == '.' || domain.back() == '.' || domain.find("..") != std::string_view::npos) return false;
  for (unsigned char c : domain) {
    if (!(std::isalnum(c) || c == '-' || c == '.' || c >= 0x80)) return false;
  }
  return true;
}

}  // namespace

Command ParseCommand(std::string_view line) {
  Command cmd;
  line = Trim(line);
  auto sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  cmd.verb_text = Upper(verb);
  if (sp != std::string_view::npos) cmd.arg = std::string(Trim(line.substr(sp + 1)));
  for (const auto& v : kVerbs) {
    if (cmd.verb_text == v.name) {
      cmd.verb = v.verb;
      break;
    }
  }
  return cmd;
}

PathArg ParsePathArg(std::string_view arg, std::string_view keyword, bool allow_null) {
  PathArg out;
  const bool from = keyword == "FROM";
  const std::string syntax = from ? "501 5.5.4 Syntax: MAIL FROM:<address>" : "501 5.5.4 Syntax: RCPT TO:<address>";
  const std::string bad = from ? "501 5.1.7 Bad sender address syntax" : "501 5.1.3 Bad recipient address syntax";
  std::string upper = Upper(arg.substr(0, keyword.size() + 1));
  if (upper != std::string(keyword) + ":") {
    out.error = syntax;
    return out;
  }
  std::string_view rest = Trim(arg.substr(keyword.size() + 1));
  if (rest.empty()) {
    out.error = syntax;
    return out;
  }
  std::string_view path;
  if (rest.front() == '<') {
    auto close = rest.find('>');
    if (close == std::string_view::npos) {
      out.error = bad;
      return out;
    }
    path = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
  } else {
    // Tolerate a bare address (no brackets), as sendmail and Postfix do.
    auto sp = rest.find(' ');
    path = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp);
  }
  // Strip an RFC 5321 source route: <@a,@b:user@host>.
  if (!path.empty() && path.front() == '@') {
    auto colon = path.find(':');
    if (colon == std::string_view::npos) {
      out.error = bad;
      return out;
    }
    path = path.substr(colon + 1);
  }
  if (path.empty()) {
    if (!allow_null) {
      out.error = bad;
      return out;
    }
  } else if (!ValidMailbox(path) && !(!from && Upper(path) == "POSTMASTER")) {
    out.error = bad;
    return out;
  }
  out.address = std::string(path);
  // ESMTP parameters: KEYWORD[=VALUE] separated by spaces.
  rest = Trim(rest);
  while (!rest.empty()) {
    auto sp = rest.find(' ');
    std::string_view p = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view() : Trim(rest.substr(sp));
    if (p.empty()) continue;
    auto eq = p.find('=');
    std::string key = Upper(p.substr(0, eq));
    std::string value = eq == std::string_view::npos ? std::string() : std::string(p.substr(eq + 1));
    if (key.empty()) {
      out.error = syntax;
      return out;
    }
    out.params.emplace_back(std::move(key), std::move(value));
  }
  out.ok = true;
  return out;
}

}  // namespace mx::ingress
