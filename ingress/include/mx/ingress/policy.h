// policy.h — the ingress acceptance policy: everything an SMTP session asks
// "may I?" about, built from mx.yaml and the sendmail-format maps.
//
// A Policy is immutable once loaded; a reload builds a new one and swaps it
// in whole (sessions keep the one they started with), so a bad file never
// leaves a half-applied policy. Load() answers with the first error naming
// the key or "file:line". Checks never block: they only look at memory.
// DNSBL answers are fetched by the server and passed in.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mx/common/cidr.h"
#include "mx/common/config.h"
#include "mx/common/result.h"
#include "mx/ingress/client_lookup.h"
#include "mx/ingress/dkim.h"
#include "mx/ingress/maps.h"
#include "mx/v1/types.pb.h"

namespace mx::ingress {

struct ClientInfo {
  std::string addr;  // IP
  std::string name;  // reverse DNS or "unknown"
};

// Why something was refused (metrics label; a bounded set).
enum class RejectReason {
  kSyntax,
  kSequence,
  kSize,
  kRelay,
  kTooManyRecipients,
  kBareLf,
  kQueue,
  kErrors,
  kUnknownCommand,
  kLineLength,
  kAccess,
  kUserUnknown,
  kRedirect,
  kHeader,
  kHops,
  kDnsbl,
  kAuth,
  kTls,
  kConnLimit,
  kRate,
  kLoad,
  kStorage,
  kPrivacy,
  kEtrn,
  kDrain,
  kAuthRate,
  kDkim,        // signing failed: 451 4.7.5
  kSuppressed,  // RCPT to an address on the suppression list: 550 5.1.1
};
const char* RejectReasonName(RejectReason r);

// The answer of one policy step.
struct Verdict {
  enum class Kind {
    kNone,     // no opinion: go on with the next check
    kOk,       // accepted (access OK: skip the remaining checks of this stage)
    kRelay,    // accepted and the client or recipient may relay
    kReject,   // refuse with `reply`
    kDiscard,  // accept and silently drop the whole message
  };
  Kind kind = Kind::kNone;
  std::string reply;  // kReject: full SMTP reply
  RejectReason reason = RejectReason::kAccess;
  std::string why;  // which rule decided, e.g. "access:12 Connect:192.0.2 REJECT"

  bool rejected() const { return kind == Kind::kReject; }
};

// What RCPT produced: a verdict plus the recipients it expands to.
struct RecipientVerdict : Verdict {
  std::vector<std::string> addresses;  // after virtusertable/aliases ({rcpt} when unchanged)
};

struct HeaderRule {
  std::string header;  // lower-case
  enum class Match { kExact, kPrefix, kRegex } match = Match::kRegex;
  std::string pattern;  // lower-case for kExact/kPrefix
  std::string reply;
  std::shared_ptr<void> regex;  // compiled regex_t (kRegex)
  std::string origin;           // "ingress.header_checks[0]"
};

// Where map files come from: given a path as the config names it, its text.
using MapReader = std::function<Result<std::string>(const std::string& path)>;

class Policy {
 public:
  // Builds the policy from the ingress config; map paths are relative to
  // config_dir (or, with reader, whatever reader makes of them). hostname ($j)
  // is always a local domain. version names it in logs and cluster status.
  static Result<std::shared_ptr<const Policy>> Load(const IngressConfig& config, const std::string& config_dir,
                                                    const MapReader& reader = nullptr,
                                                    const std::string& version = "local");
  // A pushed policy (mxctl policy apply): the ingress section of the
  // bundle's mx.yaml, maps from the bundle's files. With local, what belongs
  // to the node stays the node's own (hostname, listen, threads, TLS files,
  // queue, DNS servers, load average file, timeouts). Errors name the key or
  // file and line.
  static Result<std::shared_ptr<const Policy>> FromBundle(const v1::PolicyBundle& bundle,
                                                          const IngressConfig* local = nullptr);
  const std::string& version() const { return version_; }

  const IngressConfig& settings() const { return settings_; }
  bool novrfy() const { return novrfy_; }
  bool noexpn() const { return noexpn_; }
  // AUTH users (nullptr when ingress.auth_users_file is not set).
  const AuthUsers* auth_users() const { return auth_users_ ? &*auth_users_ : nullptr; }
  // DKIM signing keys (ingress.dkim; empty signer when none are set).
  const DkimSigner& dkim() const { return *dkim_; }

  // Connect: mynetworks and access Connect: (kRelay = trusted client).
  Verdict CheckConnect(const ClientInfo& client) const;
  // Connect, after access: the DNSBL answers in zone order. A pass answer
  // (DNSWL) ends the checks; a temporary DNS failure is a pass (counted by
  // the caller from facts). kNone: not listed anywhere.
  Verdict CheckDnsbl(const ClientInfo& client, const ClientFacts& facts) const;
  // The zones CheckDnsbl() wants answers for, in order.
  const std::vector<std::string>& dnsbl_zones() const { return dnsbl_zone_names_; }
  // The connect stage around the DNS lookups, shared by sessions and the
  // policy test: DnsblZonesFor() says which zones to ask given the verdict on
  // the address alone (none once access or mynetworks decided); FinishConnect()
  // takes the answers: the client's name (when reverse) for Connect: host
  // keys, then the DNSBL.
  std::vector<std::string> DnsblZonesFor(const Verdict& by_address) const;
  Verdict FinishConnect(ClientInfo* client, Verdict by_address, const ClientFacts& facts, bool reverse) const;
  // MAIL: access From: for the reverse-path ("" = null sender).
  Verdict CheckSender(std::string_view sender) const;
  // RCPT: access To:, relay control, virtusertable and aliases. trusted: the
  // client may relay (mynetworks, Connect: RELAY or authenticated).
  RecipientVerdict CheckRecipient(std::string_view rcpt, bool trusted) const;
  // DATA: header rules and MaxHopCount over the header block.
  Verdict CheckHeaders(std::string_view message) const;
  // ETRN: may a queue run be started for this domain?
  bool IsRelayDomain(std::string_view domain) const;
  bool IsLocalDomain(std::string_view domain) const;
  // mynetworks: also exempt from the per-IP connection limits (as Postfix's
  // smtpd_client_event_limit_exceptions).
  bool InMynetworks(std::string_view ip) const { return mynetworks_.Contains(ip); }

  // One line per loaded source, for logs: "access=/etc/mx/access (12 entries)".
  std::string Describe() const;

 private:
  Policy() = default;
  Expansion Expand(const std::string& address, int depth) const;
  void ExpandAlias(const std::string& local, int depth, Expansion* out) const;

  IngressConfig settings_;
  bool novrfy_ = true, noexpn_ = true;
  CidrList mynetworks_;
  std::vector<std::string> local_domains_;  // lower-case, incl. hostname
  std::vector<std::string> relay_domains_;  // lower-case; subdomains match
  AccessMap access_;
  AliasMap aliases_;
  VirtuserTable virtusers_;
  std::optional<AuthUsers> auth_users_;
  std::shared_ptr<const DkimSigner> dkim_;
  std::vector<HeaderRule> header_rules_;
  struct Dnsbl {
    DnsblZone config;
    CidrList block, pass;
  };
  std::vector<Dnsbl> dnsbl_;
  std::vector<std::string> dnsbl_zone_names_;
  std::vector<std::string> sources_;
  std::string version_;
};

}  // namespace mx::ingress
