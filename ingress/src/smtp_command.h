// smtp_command.h — RFC 5321 command line parsing (no I/O, no state).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mx::ingress {

enum class Verb {
  kUnknown,
  kHelo,
  kEhlo,
  kMail,
  kRcpt,
  kData,
  kRset,
  kNoop,
  kQuit,
  kVrfy,
  kExpn,
  kHelp,
  kStartTls,
  kAuth,
  kBdat,
  kEtrn
};

struct Command {
  Verb verb = Verb::kUnknown;
  std::string verb_text;  // as received, upper-cased
  std::string arg;        // everything after the verb, trimmed
};

// Splits "VERB args" (line without CRLF). Never fails: unknown verbs are kUnknown.
Command ParseCommand(std::string_view line);

// Result of parsing "FROM:<path> params" / "TO:<path> params".
struct PathArg {
  bool ok = false;
  std::string error;                                        // full SMTP reply when !ok
  std::string address;                                      // without <>; "" = null path
  std::vector<std::pair<std::string, std::string>> params;  // keyword upper-cased, value as given
};
// keyword: "FROM" or "TO". allow_null: whether <> is acceptable.
PathArg ParsePathArg(std::string_view arg, std::string_view keyword, bool allow_null);

}  // namespace mx::ingress
