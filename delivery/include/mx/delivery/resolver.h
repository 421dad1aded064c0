// resolver.h — MX resolution for delivery (c-ares behind an interface so tests
// and later DNS policies can substitute it).
//
// ResolveMx answers once per call, on the resolver's own thread: hosts ordered
// by preference (equal preferences shuffled), each with its addresses (IPv6
// first, then IPv4, as delivery.inet_protocols allows);
// implicit MX (the domain's own A records) when there is no MX; null MX
// (RFC 7505) and non-existent domains as permanent answers; anything else as
// a temporary failure — never a bounce.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mx/common/result.h"

namespace mx::delivery {

struct MxHost {
  std::string name;
  uint16_t preference = 0;
  std::vector<std::string> addrs;
};

struct MxAnswer {
  enum class Kind { kOk, kNoSuchDomain, kNullMx, kTempFail };
  Kind kind = Kind::kTempFail;
  std::string error;  // why, for logs and deferral reasons
  bool implicit = false;
  bool secure = false;  // the MX answer carried the AD bit (ResolverOptions::dnssec)
  std::vector<MxHost> hosts;
};

// A TLSA record (RFC 6698): certificate usage, selector, matching type, data.
struct Tlsa {
  uint8_t usage = 0, selector = 0, mtype = 0;
  std::string data;
};
struct TlsaAnswer {
  enum class Kind { kOk, kNone, kTempFail };
  Kind kind = Kind::kTempFail;
  bool secure = false;  // AD bit: DNSSEC-validated by the resolver
  std::string error;
  std::vector<Tlsa> records;
};
// The TLSA records of a raw DNS answer (every TLSA in the answer section).
std::vector<Tlsa> ParseTlsaAnswer(const unsigned char* answer, int length);

// TXT records of one name (MTA-STS): each record's strings joined.
struct TxtAnswer {
  enum class Kind { kOk, kNone, kTempFail };  // kNone: no such name or no TXT
  Kind kind = Kind::kTempFail;
  std::string error;
  std::vector<std::string> records;
};

class Resolver {
 public:
  virtual ~Resolver() = default;
  virtual void ResolveMx(const std::string& domain, std::function<void(MxAnswer)> done) = 0;
  // A records of one host (smart host, fallback MX host); empty list on failure.
  virtual void ResolveHost(const std::string& host, std::function<void(MxAnswer)> done) = 0;
  // TLSA records of _<port>._tcp.<host>, with the AD bit; a resolver
  // without them answers kNone (no DANE).
  // NOLINTNEXTLINE(performance-unnecessary-value-param): implementations keep the callback
  virtual void ResolveTlsa(const std::string& host, uint16_t port, std::function<void(TlsaAnswer)> done) {
    (void)host;
    (void)port;
    TlsaAnswer a;
    a.kind = TlsaAnswer::Kind::kNone;
    done(std::move(a));
  }
  // TXT records; a resolver without them answers kTempFail.
  // NOLINTNEXTLINE(performance-unnecessary-value-param): implementations keep the callback
  virtual void ResolveTxt(const std::string& /*name*/, std::function<void(TxtAnswer)> done) {
    TxtAnswer a;
    a.error = "TXT lookups are not supported by this resolver";
    done(std::move(a));
  }
};

struct ResolverOptions {
  bool ipv4 = true;
  bool ipv6 = true;  // AAAA lookups; IPv6 addresses are tried first
  // WorkAroundBrokenAAAA: a temporary AAAA failure (SERVFAIL, timeout) counts
  // as "no IPv6 address". Without it the host is unusable for this attempt
  // (its IPv4 addresses are not tried), as in sendmail.
  bool work_around_broken_aaaa = false;
  // DANE: MX queries ask for the AD bit (the resolver must validate DNSSEC
  // and be trusted: on the host or a protected network).
  bool dnssec = false;
};

// servers: "ip:port" list; empty uses /etc/resolv.conf.
Result<std::unique_ptr<Resolver>> MakeAresResolver(const std::vector<std::string>& servers,
                                                   std::chrono::milliseconds timeout, ResolverOptions options = {});

}  // namespace mx::delivery
