// maps.h — sendmail-format map files: access, aliases, virtusertable and
// class files (local-host-names, relay-domains).
//
// Every parser validates the whole file and answers with the first error as
// "file:line: what" (Code::kInvalidArgument); a map is either loaded whole or
// not at all, so a bad file never half-replaces a good one. Lookups are
// read-only and safe from any thread.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mx/common/cidr.h"
#include "mx/common/result.h"

namespace mx::ingress {

// ---- access (FEATURE(access_db)) -------------------------------------------

enum class AccessAction {
  kOk,       // accept, skip the remaining checks of this stage
  kRelay,    // accept and allow relaying (Connect: trusted client; To: relay to)
  kReject,   // 550 5.7.1 with the stage's default text
  kDiscard,  // accept and drop the message (counted as msgsdis)
  kError,    // reply with the entry's own code and text
  kSkip,     // stop looking (less specific keys are not consulted)
};
const char* AccessActionName(AccessAction a);

struct AccessEntry {
  std::string key;  // as written in the file (for traces)
  AccessAction action = AccessAction::kOk;
  std::string reply;  // kError: full reply "550 5.7.1 text"
  int line = 0;
};

class AccessMap {
 public:
  // name is used in error messages (usually the file path).
  static Result<AccessMap> Parse(std::string_view text, const std::string& name);

  // Connect: the client IP (exact, then its IPv4 octet prefixes, then CIDR
  // entries most specific first), then its host name and parent domains.
  // Tagged keys win over untagged ones at each level. nullptr: no entry.
  const AccessEntry* LookupConnect(std::string_view ip, std::string_view hostname) const;
  // From:/To: (tag "From" or "To"): user+detail@host, user@host, host and its
  // parent domains, user@; "<>" for the null sender.
  const AccessEntry* LookupAddress(std::string_view tag, std::string_view address) const;

  size_t size() const { return exact_.size() + cidrs_.size(); }

 private:
  const AccessEntry* Find(std::string_view tag, std::string_view key) const;

  std::unordered_map<std::string, AccessEntry> exact_;  // "connect:key", "from:key", "to:key", ":key"
  struct CidrEntry {
    Cidr net;
    int prefix = 0;
    bool tagged = false;
    AccessEntry entry;
  };
  std::vector<CidrEntry> cidrs_;  // most specific first
};

// Parses an access right-hand side or an error: target: "REJECT",
// "ERROR:\"550 5.7.1 text\"", "ERROR:5.7.1:550 text", "550 text". The
// reply gets an enhanced status code of class x.7.1 when it has none.
Result<AccessEntry> ParseAccessValue(std::string_view value);

// ---- aliases and virtusertable ---------------------------------------------

// What a recipient in a local domain turns into.
struct Expansion {
  enum class Kind {
    kAddresses,  // deliver to `addresses` (at least one)
    kRedirect,   // 551 5.1.6 User has moved; please try <addresses[0]>
    kError,      // reply with `reply`
    kUnknown,    // no entry: 550 5.1.1 User unknown
  };
  Kind kind = Kind::kUnknown;
  std::vector<std::string> addresses;
  std::string reply;
  std::string via;  // entries used, for traces: "virtusertable:3 aliases:7"
};

// sendmail aliases(5): "name: target, target" with indented continuation
// lines. Targets are addresses, names of other aliases, "addr.REDIRECT"
// (FEATURE(redirect)) or "error:5.1.1:550 text". Programs, files and
// :include: are refused: the ingress never runs or writes anything.
class AliasMap {
 public:
  static Result<AliasMap> Parse(std::string_view text, const std::string& name);
  struct Entry {
    std::vector<std::string> targets;
    int line = 0;
  };
  const Entry* Find(std::string_view local) const;  // case-insensitive
  size_t size() const { return entries_.size(); }

 private:
  std::map<std::string, Entry> entries_;
};

// sendmail virtusertable: "user@domain target", "user+*@domain target",
// "@domain target" (catch-all; %1 = user, %2 = +detail). The domains named
// become accepted (virtual) domains.
class VirtuserTable {
 public:
  static Result<VirtuserTable> Parse(std::string_view text, const std::string& name);
  struct Entry {
    std::string key;
    std::string target;
    int line = 0;
  };
  // Most specific match for address, with %1/%2 substituted into target.
  std::optional<Entry> Lookup(std::string_view address) const;
  bool HasDomain(std::string_view domain) const { return domains_.count(std::string(domain)) > 0; }
  size_t size() const { return entries_.size(); }

 private:
  std::unordered_map<std::string, Entry> entries_;  // lower-case keys
  std::unordered_set<std::string> domains_;
};

// SMTP AUTH users: "user:hash" lines, hash in crypt(3) form ("$6$…" from
// `openssl passwd -6`, "$y$…" yescrypt). Plain-text passwords are refused.
class AuthUsers {
 public:
  static Result<AuthUsers> Parse(std::string_view text, const std::string& name);
  // Slow on purpose (the hash's cost): call it off the event loop. Unknown
  // users cost as much as known ones.
  bool Verify(std::string_view user, std::string_view password) const;
  size_t size() const { return users_.size(); }

 private:
  std::unordered_map<std::string, std::string> users_;
};

// A sendmail class file (local-host-names, relay-domains): one name per line,
// '#' comments. Names are validated as domain names and lower-cased.
Result<std::vector<std::string>> ParseClassFile(std::string_view text, const std::string& name);

// Validates an SMTP reply "550 5.7.1 text" or "550 text" (4xx/5xx only) and
// adds the enhanced status code "<class>.<default_tail>" when it has none.
Result<std::string> NormalizeReply(std::string_view text, std::string_view default_tail, std::string_view default_text);

}  // namespace mx::ingress
