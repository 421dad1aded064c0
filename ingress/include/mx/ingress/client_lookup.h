// client_lookup.h — what DNS says about a connecting client: its
// forward-confirmed reverse name and its DNSBL listings, with a TTL cache.
//
// Lookups run on the DNS channel's thread and never block the caller. A DNS
// timeout or SERVFAIL is reported as kTempFail (the policy lets the client
// pass and counts it), never as "listed". Only answers are cached, with their
// TTL (bounded to [60 s, 1 h]; NXDOMAIN for 5 min); failures are not.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "mx/common/clock.h"
#include "mx/common/dns.h"

namespace mx::ingress {

struct DnsblAnswer {
  std::string zone;
  enum class Kind { kNotListed, kListed, kTempFail } kind = Kind::kNotListed;
  std::vector<std::string> addrs;  // the A records of a listing (127.0.0.x)
  std::string error;               // kTempFail: why
};

// "listed", "clean" or "tempfail" (metric label and policy-test result).
const char* DnsblResultName(DnsblAnswer::Kind kind);

struct ClientFacts {
  std::string name = "unknown";    // forward-confirmed PTR name, or "unknown"
  std::vector<DnsblAnswer> dnsbl;  // one per zone asked, in the order asked
};

class ClientLookup {
 public:
  ClientLookup(std::unique_ptr<DnsChannel> dns, const Clock& clock);
  ~ClientLookup();

  // done runs once, when every lookup has answered: on the DNS thread, or on
  // the caller's thread before Lookup returns when every answer was cached (a
  // caller that must not run it re-entrantly posts it, as the server does).
  void Lookup(const std::string& ip, bool reverse, const std::vector<std::string>& zones,
              std::function<void(ClientFacts)> done);

 private:
  struct Cached {
    int64_t expires_us = 0;
    bool exists = false;
    std::vector<std::string> values;  // A records or PTR names
  };
  struct Job;
  using Answer = std::function<void(bool ok, const Cached& value, const std::string& error)>;

  void Resolve(const std::string& name, int type, Answer answer);
  bool FromCache(const std::string& key, Cached* out);
  void Store(const std::string& key, Cached value);

  std::unique_ptr<DnsChannel> dns_;
  const Clock& clock_;
  std::mutex mu_;
  std::unordered_map<std::string, Cached> cache_;
};

}  // namespace mx::ingress
