// mta_sts.h — SMTP MTA Strict Transport Security (RFC 8461).
//
// A recipient domain publishes "_mta-sts.<domain> TXT v=STSv1; id=…" and a
// policy at https://mta-sts.<domain>/.well-known/mta-sts.txt. Under `enforce`
// mail goes only to MX hosts the policy names, over STARTTLS with a
// certificate that chains to a trusted root and names the host; anything
// else is deferred, never sent in the clear. `testing` only logs. Policies
// are cached for their max_age and refetched when the TXT id changes; a
// failed fetch keeps the cached policy (RFC 8461 5.1), and with none cached
// the domain is treated as having no policy.
#pragma once

#include <utility>  // before Boost.Asio's awaitable.hpp, which uses std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mx/common/clock.h"
#include "mx/common/result.h"
#include "mx/delivery/resolver.h"

namespace mx::delivery {

struct StsPolicy {
  enum class Mode { kNone, kTesting, kEnforce };
  Mode mode = Mode::kNone;
  std::vector<std::string> mx;  // lower-case patterns ("mx.example.com", "*.example.net")
  int64_t max_age_s = 0;
  std::string id;  // of the TXT record it was fetched under
  int64_t fetched_unix_us = 0;

  bool Matches(std::string_view host) const;
  std::string MxList() const;  // "a, *.b" for messages
};
const char* StsModeName(StsPolicy::Mode mode);

// The policy file (RFC 8461 3.2); errors say which field is wrong.
Result<StsPolicy> ParseStsPolicy(std::string_view text);
// The policy id of a TXT record, when it is a valid "v=STSv1; id=…" record.
std::optional<std::string> ParseStsRecord(std::string_view txt);
// RFC 8461 4.1: a pattern names a host exactly, or "*.domain" names hosts one
// label below domain.
bool StsMxMatches(std::string_view pattern, std::string_view host);

class MtaSts {
 public:
  struct Options {
    uint16_t https_port = 443;
    std::chrono::seconds timeout{10};
    std::shared_ptr<boost::asio::ssl::context> tls;  // verifying client context (trust anchors loaded)
    std::chrono::seconds recheck{60};                // TXT asked again at most this often per domain
  };
  struct Answer {
    std::optional<StsPolicy> policy;  // the policy in force, if any
    std::string note;                 // what happened, for logs ("fetched id 2026…", "fetch failed: …")
  };

  MtaSts(Resolver& resolver, const Clock& clock, Options options);

  // The policy in force for domain; asks DNS and fetches over HTTPS as
  // needed. Runs on the caller's executor; never throws.
  boost::asio::awaitable<Answer> Lookup(std::string domain);

 private:
  struct Entry {
    std::optional<StsPolicy> policy;
    int64_t checked_unix_us = 0;
    bool fetching = false;
  };
  boost::asio::awaitable<Result<std::string>> Fetch(std::string domain);

  Resolver& resolver_;
  const Clock& clock_;
  Options options_;
  std::mutex mu_;
  std::map<std::string, Entry> cache_;  // guarded by mu_
};

}  // namespace mx::delivery
