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
  // Runs fn on the channel's thread (to continue a multi-step lookup there).
  virtual void Post(std::function<void()> fn) = 0;
};

// "4.3.2.1" for 1.2.3.4, or the nibble form for IPv6; "" if ip is not an address.
std::string ReverseName(const std::string& ip);

}  // namespace mx
