// domain_delivery.h — the steps that deliver one message's recipients of one
// destination domain, in order: the route (a mailertable error, the
// mailer's M= size), MX resolution (or the relay's address; null MX and
// NXDOMAIN bounce, anything temporary defers), the secondary-MX cut
// (hosts no better than us), the site (shaping, suspended or slowed by a
// reply rule), the TLS profile (tls_security_level, the site's TLS,
// tls_encrypt_domains), MTA-STS (an enforce policy keeps its listed hosts
// and requires verified TLS), the egress source, then each MX host in order:
// host-status skip, DANE (TLSA records of a secure answer), each address
// through the connection pool (opportunistic TLS that fails is retried in
// the clear and remembered), the reply rules; then fallback_mx_host; then a
// deferral with the last error. Never touches queue state: the outcomes go
// back to the worker.
#pragma once

#include <utility>  // before Boost.Asio's awaitable.hpp, which uses std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "ack_builder.h"
#include "cluster_view.h"
#include "connection_pool.h"
#include "egress.h"
#include "mta_sts.h"
#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/delivery/resolver.h"
#include "mx/delivery/routing.h"
#include "tls_memory.h"

namespace mx::delivery {

// The SMTP client settings delivery picks from, per TLS requirement.
struct TlsProfiles {
  SmtpClientConfig base;  // delivery.tls_security_level
  SmtpClientConfig encrypt, plain, may;
  SmtpClientConfig verified;  // MTA-STS enforce: kEncrypt with certificate checks
  SmtpClientConfig dane;      // DANE: kEncrypt on a DANE-enabled context
  bool dane_enabled = false;

  static TlsProfiles From(const DeliveryConfig& config);
  // delivery.mta_sts: ctx verifies certificates against the trust anchors.
  void EnableMtaSts(std::shared_ptr<boost::asio::ssl::context> ctx);
  // delivery.dane: ctx is DANE-enabled (SSL_CTX_dane_enable).
  void EnableDane(std::shared_ptr<boost::asio::ssl::context> ctx);
};

// What one domain's delivery attempt produced.
struct DomainResult {
  std::vector<Outcome> outcomes;       // one per recipient, in order
  std::string site;                    // when a shaping rule names the site
  std::string source;                  // the egress source, when delivery.sources are configured
  std::vector<v1::HostOutcome> hosts;  // host status to report with the ack
};

class DomainDelivery {
 public:
  // Everything the steps use; each must outlive the DomainDelivery.
  struct Parts {
    Resolver& resolver;
    const Routing& routing;
    ClusterView& cluster;
    ConnectionPool& pool;
    TlsFailureMemory& tls_memory;
    MtaSts* sts;  // null: delivery.mta_sts is off
    const EgressSources& egress;
    const Clock& clock;
  };

  DomainDelivery(const DeliveryConfig& config, const std::string& hostname, TlsProfiles profiles, Parts parts);

  boost::asio::awaitable<DomainResult> Deliver(std::string domain, const Route& route, const v1::LeasedMessage& m,
                                               const std::vector<ClientRcpt>& rcpts) const;

 private:
  class Run;

  const DeliveryConfig& config_;
  const TlsProfiles profiles_;
  Parts parts_;
  std::set<std::string> encrypt_domains_;
  std::set<std::string> self_names_;
  std::optional<Relay> fallback_;
};

}  // namespace mx::delivery
