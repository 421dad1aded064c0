// shaping.h — sites and their traffic shaping.
//
// A site is where mail goes, as the receiving side sees it: the set of MX
// hosts. Every destination domain whose MX set is the same belongs to the
// same site and shares its limits (connection slots, rates) and its cached
// connections; a rule can also name a site by MX host suffixes (every domain
// hosted by one provider: ".google.com") or by recipient domains. Limits are
// cluster-wide: the permits of shard 0's leader (permits.h).
//
// The rules are YAML: the shipped defaults for the big mailbox providers
// (delivery/shaping-defaults.yaml, built in), then delivery.shaping_file on
// top (a site of the same name is amended field by field, a new one added),
// then delivery.destinations and destination_defaults (older, domain-named
// form of the same limits). See docs/OPERATIONS.md, "Traffic shaping".
#pragma once

#include <cstdint>
#include <memory>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mx/common/config.h"
#include "mx/common/result.h"

namespace mx::delivery {

// count messages (or connections) per period_s seconds, spaced evenly.
struct RateLimit {
  uint32_t count = 0;  // 0: no limit
  uint32_t period_s = 60;
  bool none() const { return count == 0; }
  std::string ToString() const;  // "10/s", "100/min", "3000/h", "5/90s"
};

// "10/s", "100/min", "3000/h", "1/2s", "5/d"; "0" or "none": no limit.
Result<RateLimit> ParseRate(std::string_view text);

enum class SiteTls {
  kDefault,   // delivery.tls_security_level (and tls_encrypt_domains)
  kNone,      // never STARTTLS
  kMay,       // STARTTLS when offered, clear text if it fails
  kRequired,  // no delivery without TLS (Postfix "encrypt")
};

// Reputation backoff: a reply (a greeting, a MAIL/RCPT/DATA answer, a
// connection error) that matches suspends the site, or slows it to tighter
// limits, for a while — cluster-wide, through shard 0 (v1::SiteStatus).
struct ReplyRule {
  std::string match;  // ECMAScript regex, case-insensitive, searched in the reply
  std::shared_ptr<const std::regex> re;
  bool suspend = true;  // false: slow
  uint32_t duration_s = 0;
  uint32_t max_connections = 0;   // slow: at most this many connections (0: unchanged)
  RateLimit message_rate{0, 60};  // slow: at most this message rate (none: unchanged)
};

// The effective shaping of one site.
struct SiteShape {
  std::string site;                          // the rule's name, or "mx:" + the sorted MX host names
  std::string key;                           // permit key: "site:" + site
  bool named = false;                        // a rule named it (not only the defaults)
  uint32_t max_connections = 0;              // cluster-wide; 0: unlimited
  uint32_t max_messages_per_connection = 0;  // 0: unlimited
  RateLimit message_rate;                    // messages, cluster-wide
  RateLimit connection_rate;                 // new connections, cluster-wide
  SiteTls tls = SiteTls::kDefault;
  // The egress source delivery uses (set by the worker; "" none): the permit
  // key is then per site and source, and the source's own rate applies.
  std::string source;
  RateLimit source_rate;
  // The site's reply rules, then the default rule's (owned by the Shaping).
  const std::vector<ReplyRule>* site_replies = nullptr;
  const std::vector<ReplyRule>* default_replies = nullptr;
  // The first rule that matches reply, or null.
  const ReplyRule* MatchReply(std::string_view reply) const;
};

class Shaping {
 public:
  struct Rule {
    std::string name;
    std::vector<std::string> mx;       // ".suffix" matches host names ending so; else the exact host name
    std::vector<std::string> domains;  // recipient domains and their subdomains
    // Unset fields (nullopt-like: has_*) come from the default rule.
    bool has_max_connections = false, has_max_messages_per_connection = false, has_message_rate = false,
         has_connection_rate = false, has_tls = false;
    uint32_t max_connections = 0;
    uint32_t max_messages_per_connection = 0;
    RateLimit message_rate{0, 60}, connection_rate{0, 60};
    SiteTls tls = SiteTls::kDefault;
    bool has_replies = false;
    std::vector<ReplyRule> replies;
  };

  // The shipped defaults (unless delivery.shaping_defaults is false), then
  // delivery.shaping_file (relative to config_dir), then destinations.
  static Result<Shaping> Load(const DeliveryConfig& config, const std::string& config_dir);
  // The same from texts: each (name, YAML text) layer over the previous.
  static Result<Shaping> Parse(const DeliveryConfig& config,
                               const std::vector<std::pair<std::string, std::string>>& layers);
  // The built-in rules (delivery/shaping-defaults.yaml).
  static std::string_view ShippedDefaults();

  // The site of domain, whose mail goes to mx_hosts (MX names, or the relay
  // host): a rule naming the domain, else a rule matching any of the hosts,
  // else the MX set itself under the default rule.
  SiteShape For(std::string_view domain, const std::vector<std::string>& mx_hosts) const;

  const std::vector<Rule>& rules() const { return rules_; }
  const Rule& defaults() const { return default_; }

 private:
  SiteShape Shape(const Rule& r, std::string site, bool named) const;

  Rule default_;
  std::vector<Rule> rules_;
};

}  // namespace mx::delivery
