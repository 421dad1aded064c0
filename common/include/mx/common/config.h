// config.h — mx.yaml: one file configures every role of a node.
//
// Load() validates everything it reads and answers with an error naming the
// key at fault; a node never starts on a half-understood config. Defaults follow
// sendmail's where sendmail has the option (named in comments).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "mx/common/result.h"

namespace mx {

struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string ToString() const;
};
// "host:port", "[v6]:port"; default_port when the port is absent (0: required).
Result<HostPort> ParseHostPort(const std::string& text, uint16_t default_port = 0);

struct IngressConfig {
  std::string listen = "127.0.0.1:2525";
  std::string hostname;                       // $j: used in greeting and Received:
  std::string greeting = "ESMTP";             // SmtpGreetingMessage (no software/version)
  uint64_t max_message_size = 10ULL << 20;    // MaxMessageSize
  uint32_t max_recipients_per_message = 100;  // MaxRecipientsPerMessage
  uint32_t max_line_length = 2048;
  uint32_t max_errors = 10;                   // errors before the session is dropped
  std::chrono::seconds command_timeout{300};  // Timeout.command
  std::chrono::seconds data_timeout{600};     // Timeout.datablock
  std::chrono::seconds enqueue_timeout{30};
  // Clients that may relay to any domain (Postfix mynetworks, sendmail access RELAY).
  std::vector<std::string> mynetworks = {"127.0.0.0/8", "::1/128"};
  // Domains accepted from anyone (local-host-names and relay-domains).
  std::vector<std::string> relay_domains;
  std::vector<std::string> queue;  // queue shard addresses (host:port)
  unsigned threads = 0;            // io_context threads; 0 = one per core
};

struct QueueConfig {
  std::string listen = "127.0.0.1:7400";
  std::string data_dir = "/var/lib/mx/queue";
  uint32_t shard = 0;
  uint32_t group_commit_max_commands = 512;
  uint64_t group_commit_max_bytes = 16ULL << 20;
  std::chrono::microseconds group_commit_linger{0};
  std::chrono::seconds min_backoff{60};    // first retry delay (MinQueueAge floor)
  std::chrono::seconds max_backoff{3600};  // cap of the exponential retry delay
  std::chrono::seconds lease_ttl{300};
  std::chrono::milliseconds tick_interval{500};
  uint32_t pull_batch = 64;  // max messages per Pull response
  uint64_t pull_batch_bytes = 8ULL << 20;
  // sendmail priority factors (ClassFactor, RecipientFactor, RetryFactor).
  int64_t class_factor = 1800;
  int64_t recipient_factor = 30000;
  int64_t retry_factor = 90000;
};

struct DeliveryConfig {
  std::vector<std::string> queue;        // queue shard addresses
  std::vector<std::string> dns_servers;  // "ip:port"; empty = system resolv.conf
  std::string helo_name;                 // EHLO name; default: node hostname
  std::string smart_host;                // "[host]:port" bypasses MX lookup (SMART_HOST)
  std::string fallback_mx_host;          // FallbackMXhost
  uint16_t smtp_port = 25;               // port of remote MX hosts
  uint32_t concurrency = 64;             // messages in flight per worker
  unsigned threads = 1;
  std::chrono::seconds connect_timeout{30};    // Timeout.connect
  std::chrono::seconds greeting_timeout{300};  // Timeout.initial
  std::chrono::seconds command_timeout{300};   // Timeout.mail/rcpt (RFC 5321 4.5.3.2)
  std::chrono::seconds data_timeout{600};      // Timeout.datafinal
  std::chrono::seconds dns_timeout{5};
  std::string double_bounce_address = "postmaster";  // DoubleBounceAddress
};

struct ControlConfig {
  std::string listen = "127.0.0.1:7401";
  std::vector<std::string> queue;
};

struct Config {
  std::string node_name = "mx";
  std::string hostname = "localhost";  // FQDN of this node ($j)
  std::string log_level = "info";
  std::string metrics_listen = "127.0.0.1:9400";  // "" disables /metrics
  IngressConfig ingress;
  QueueConfig queue;
  DeliveryConfig delivery;
  ControlConfig control;
};

// Parses YAML text; errors name the offending key.
Result<Config> ParseConfig(const std::string& yaml_text);
Result<Config> LoadConfig(const std::string& path);

}  // namespace mx
