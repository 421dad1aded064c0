// dns.h — a c-ares channel driven by its own thread: the one DNS engine of
// mx (delivery's MX resolution, ingress DNSBL and reverse lookups).
//
// Query() may be called from any thread and never blocks; `done` runs on the
// channel's thread with the c-ares status and the raw answer (parse it there
// with ares_parse_*). Destroying the channel cancels outstanding queries
// (their callbacks do not run).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mx/common/result.h"

namespace mx {

class DnsChannel {
 public:
  using Done = std::function<void(int ares_status, const unsigned char* answer, int length)>;

  // servers: "ip:port" list; empty uses /etc/resolv.conf. timeout bounds one
  // query including its retry.
  static Result<std::unique_ptr<DnsChannel>> Start(const std::vector<std::string>& servers,
                                                   std::chrono::milliseconds timeout);
  virtual ~DnsChannel() = default;
  // type: ns_t_a, ns_t_mx, ns_t_ptr, ... (class IN).
  virtual void Query(const std::string& name, int type, Done done) = 0;
  // The same with the AD bit set in the query (RFC 6840 5.7), so that a
  // validating resolver says in its answer's AD bit whether the answer is
  // DNSSEC-secure. The status maps the answer's RCODE as Query does
  // (ARES_ENOTFOUND for NXDOMAIN, ARES_ENODATA for no answer records).
  virtual void QueryAd(const std::string& name, int type, Done done) { Query(name, type, std::move(done)); }
  // Runs fn on the channel's thread (to continue a multi-step lookup there).
  virtual void Post(std::function<void()> fn) = 0;
};

// Whether a raw DNS answer has the AD (authentic data) bit set.
bool AnswerIsSecure(const unsigned char* answer, int length);

// "4.3.2.1" for 1.2.3.4, or the nibble form for IPv6; "" if ip is not an address.
std::string ReverseName(const std::string& ip);

}  // namespace mx
