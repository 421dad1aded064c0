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

// One header rule (sendmail's H*: $>ruleset checks, Postfix header_checks).
struct HeaderCheck {
  std::string header;           // header name, case-insensitive
  std::string match = "regex";  // exact | prefix | regex (POSIX extended, case-insensitive)
  std::string pattern;
  std::string reply;  // "550 5.7.1 text"
};

// One DKIM signing key (ingress.dkim.keys[]): mail whose From: domain is
// domain (or a subdomain of it) is signed with it. The key type decides the
// algorithm: RSA (>= 1024 bits) rsa-sha256, Ed25519 ed25519-sha256.
struct DkimKey {
  std::string domain;    // d=
  std::string selector;  // s=: the TXT record is at <selector>._domainkey.<domain>
  std::string key_file;  // PEM private key (PKCS#8 or PKCS#1); relative to mx.yaml
};

// DKIM signing at ingress (OpenDKIM's KeyTable/SigningTable): messages from
// trusted clients (mynetworks, Connect: RELAY, authenticated) are signed.
struct DkimConfig {
  std::vector<DkimKey> keys;
  std::vector<std::string> headers;       // header names to sign (empty: the built-in list)
  bool oversign = true;                   // sign each present header once more (no one can add another)
  std::chrono::seconds signature_ttl{0};  // x= = t= + this (0: no expiry)
};

// One DNS block (or allow) list, consulted in order at connect.
struct DnsblZone {
  std::string zone;                // e.g. "zen.spamhaus.org"
  std::vector<std::string> block;  // answers (IPs/CIDRs) that mean "listed"; default 127.0.0.0/8
  std::vector<std::string> pass;   // answers that end the DNSBL checks with a pass (a DNSWL)
  // Reply to a listed client; {client}, {zone} and {answer} are filled in.
  std::string reply = "554 5.7.1 Service unavailable; Client host [{client}] blocked using {zone}";
};

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
  // Queue backpressure: an Enqueue slower than this, or failing, makes new
  // connections get 421 4.3.2 for backpressure_hold (0: off).
  std::chrono::milliseconds backpressure_latency{5000};
  std::chrono::milliseconds backpressure_hold{10000};
  // Clients that may relay to any domain (Postfix mynetworks, sendmail access RELAY).
  std::vector<std::string> mynetworks = {"127.0.0.0/8", "::1/128"};
  // Domains we relay for from anyone (sendmail relay-domains, the
  // secondary-MX role); subdomains match too.
  std::vector<std::string> relay_domains;
  std::string relay_domains_file;  // relay-domains (class R file)
  // Domains whose users we know (sendmail $=w: local-host-names); recipients
  // there are rewritten by virtusertable and aliases or refused as unknown.
  // The node's hostname is always local.
  std::vector<std::string> local_domains;
  std::string local_domains_file;  // local-host-names (class w file)
  // Map files in sendmail formats; relative paths are relative to mx.yaml.
  std::string access_map;     // FEATURE(access_db)
  std::string aliases;        // AliasFile
  std::string virtusertable;  // FEATURE(virtusertable)
  std::vector<HeaderCheck> header_checks;
  std::vector<std::string> privacy_options = {"novrfy", "noexpn"};  // PrivacyOptions
  uint32_t max_hop_count = 25;                                      // MaxHopCount
  uint32_t max_connections = 1000;                                  // MaxDaemonChildren (0: no limit)
  uint32_t max_connections_per_ip = 50;                             // FEATURE(conncontrol) (0: no limit)
  uint32_t connection_rate_per_ip = 0;         // new connections per IP per minute (FEATURE(ratecontrol); 0: off)
  double refuse_la = 0;                        // RefuseLA: refuse connections above this load (0: off)
  double queue_la = 0;                         // QueueLA: accept but only queue above this load (0: off)
  std::string loadavg_file = "/proc/loadavg";  // where the load average is read
  // DNS for DNSBL and reverse lookups ("ip:port"; default: delivery.dns_servers).
  std::vector<std::string> dns_servers;
  std::chrono::milliseconds dns_timeout{5000};
  bool reverse_dns = false;  // look up (forward-confirmed) client names for logs and Connect: host keys
  std::vector<DnsblZone> dnsbl;
  // STARTTLS (RFC 3207): offered when both are set.
  std::string tls_cert_file;
  std::string tls_key_file;
  // AUTH PLAIN/LOGIN (RFC 4954) against "user:crypt-hash" lines (openssl passwd -6).
  std::string auth_users_file;
  bool auth_over_plaintext = false;  // offer AUTH before STARTTLS (sendmail AUTH_OPTIONS without p)
  // Failed AUTH attempts allowed per client address / per user name within
  // auth_failure_window; past them AUTH is refused unverified (0: no limit).
  uint32_t auth_failures_per_ip = 10;
  uint32_t auth_failures_per_user = 20;
  std::chrono::seconds auth_failure_window{600};
  // The gRPC injection API (proto/mx/v1/inject.proto) for applications:
  // off unless inject_listen is set; calls need a token from
  // inject_tokens_file ("<name> <token>" lines, relative to mx.yaml).
  std::string inject_listen;
  std::string inject_tokens_file;
  // RCPT to an address on the cluster's suppression list is refused
  // (550 5.1.1); the list is followed from shard 0 every 2 s.
  bool check_suppressions = true;
  // DKIM signing keys: the node's own, like the TLS files (never pushed in a policy bundle).
  DkimConfig dkim;
  std::vector<std::string> queue;  // queue node gRPC addresses to start from (default: queue.peers)
  unsigned threads = 0;            // io_context threads; 0 = one per core
};

// A queue replica as the rest of the cluster reaches it.
struct QueuePeer {
  uint64_t id = 0;   // Raft server id, unique in the cluster, never reused
  std::string grpc;  // queue gRPC address (host:port)
  std::string raft;  // Raft address of shard 0; shard s uses port + s (a name is resolved at each connect)
  // Added later with `mxctl queue add-replica`, not a member of the
  // bootstrap configuration (a StatefulSet scaled past its first replicas).
  bool join = false;
};

struct QueueConfig {
  std::string listen = "127.0.0.1:7400";  // gRPC
  std::string data_dir = "/var/lib/mx/queue";
  // Cluster-wide: every role of every node must agree on shards and peers.
  uint32_t shards = 1;
  // The replicas that bootstrap every shard (3 in a cluster). Default: this
  // node alone, as in `mxd all`.
  std::vector<QueuePeer> peers;
  uint64_t node_id = 1;                        // this replica's id (in peers unless joining)
  std::string raft_listen = "127.0.0.1:7500";  // bind address of shard 0's Raft transport
  // Start with an empty shard and wait to be added (mxctl queue add-replica)
  // instead of bootstrapping from peers.
  bool join = false;
  std::chrono::milliseconds election_timeout{1000};
  std::chrono::milliseconds heartbeat_timeout{100};
  uint32_t snapshot_threshold = 8192;  // log entries between snapshots
  uint32_t snapshot_trailing = 2048;   // entries kept behind a snapshot for slow followers
  // Size of a Raft log segment file. Closing a segment costs the Raft thread an
  // io_destroy (tens of ms: it waits for an RCU grace period), so segments are
  // large enough that this happens every few seconds at full load, not every one.
  uint64_t raft_segment_size = 64ULL << 20;
  uint32_t max_inflight_entries = 4;  // uncommitted entries before proposals wait (group commit)
  bool balance_leaders = true;        // shard s prefers peers[s % n] as leader
  uint32_t group_commit_max_commands = 512;
  uint64_t group_commit_max_bytes = 16ULL << 20;
  std::chrono::microseconds group_commit_linger{0};
  // Neither group_commit_linger nor max_inflight_entries is in the file: while
  // this process hosts more than one Raft group (shards), each group lingers
  // 2 ms with one entry in flight, so groups sharing the cores and the disk
  // propose fewer, fuller entries (see docs/ARCHITECTURE.md, group commit).
  bool group_commit_tuned = false;
  std::chrono::seconds min_backoff{60};    // first retry delay (MinQueueAge floor)
  std::chrono::seconds max_backoff{3600};  // cap of the exponential retry delay
  std::chrono::seconds lease_ttl{300};
  std::chrono::milliseconds tick_interval{500};
  uint32_t pull_batch = 64;  // max messages per Pull response
  uint64_t pull_batch_bytes = 8ULL << 20;
  uint64_t min_free_disk = 64ULL << 20;  // MinFreeBlocks: Enqueue refused below this (0: off)
  std::string sort_order = "priority";   // QueueSortOrder: priority | time | host | random
  // sendmail priority factors (ClassFactor, RecipientFactor, RetryFactor).
  int64_t class_factor = 1800;
  int64_t recipient_factor = 30000;
  int64_t retry_factor = 90000;
};

// Per-destination delivery limits (0: no limit). max_connections and
// max_messages_per_minute hold cluster-wide (the queue leader counts them);
// max_messages_per_connection applies to each connection.
struct DestinationLimits {
  std::vector<std::string> domains;  // recipient domains (and their subdomains) sharing these limits
  uint32_t max_connections = 0;
  uint32_t max_messages_per_connection = 0;
  uint32_t max_messages_per_minute = 0;
};

// A delivery agent (sendmail's M line): its protocol and largest message (M=).
struct MailerConfig {
  std::string name;
  std::string protocol = "smtp";  // smtp | lmtp
  uint64_t max_message_size = 0;  // 0: no limit of its own
};

// An egress source: a local address outgoing connections are bound to, and
// the EHLO name that goes with it (its PTR name, for the receiving side).
struct EgressSource {
  std::string name;
  std::string address;  // IPv4 or IPv6 literal, local to the delivery node
  std::string ehlo;     // default: delivery.helo_name
  // Warm-up: at most this many messages per period through this source,
  // every site together, cluster-wide ("1000/h", "50000/d"; "" none).
  std::string max_message_rate;
};

// A weighted set of sources; a message's pool is the first naming its
// sender's domain in `senders`, else "default" (all sources, weight 1, when
// not configured).
struct EgressPool {
  std::string name;
  std::vector<std::pair<std::string, uint32_t>> sources;  // source name, weight
  std::vector<std::string> senders;                       // envelope sender domains (and subdomains)
};

struct DeliveryConfig {
  std::vector<std::string> queue;        // queue node gRPC addresses (default: queue.peers)
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
  std::string double_bounce_address = "postmaster";  // DoubleBounceAddress ("" drops double bounces)
  std::string postmaster_copy;                       // PostmasterCopy: gets the headers of every bounce
  std::chrono::seconds queue_warn{4 * 3600};         // Timeout.queuewarn: delay DSN after this long
  std::chrono::seconds queue_return{5 * 86400};      // Timeout.queuereturn: bounce after this long
  // Timeout.hoststatus: an MX host that failed less than this long ago is
  // skipped without connecting, by every worker of the cluster (0: off).
  std::chrono::seconds host_status_timeout{30 * 60};
  // STARTTLS to MX hosts (Postfix smtp_tls_security_level): none | may | encrypt.
  std::string tls_security_level = "may";
  std::vector<std::string> tls_encrypt_domains;  // these destinations always need TLS
  // Trust anchors for verified TLS (MTA-STS): a PEM bundle; empty: the system's.
  std::string tls_ca_file;
  // An opportunistic STARTTLS whose handshake failed: that address gets
  // plaintext for this long without trying again (0: try every time).
  std::chrono::seconds tls_failure_memory{3600};
  // A hard bounce (5xx, class invalid_recipient, answered by the
  // destination) puts the address on the cluster's suppression list, which
  // every ingress checks at RCPT.
  bool suppress_hard_bounces = false;
  // MTA-STS (RFC 8461), opt-in: recipient domains' policies are fetched and
  // an `enforce` policy is obeyed (listed MX hosts, verified TLS, else defer).
  bool mta_sts = false;
  // DANE (RFC 7672), opt-in: an MX host with DNSSEC-secure TLSA records
  // (AD bit from dns_servers, which must validate) gets TLS checked against
  // them, or no mail. Needs a validating resolver the node trusts.
  bool dane = false;
  uint16_t mta_sts_port = 443;               // HTTPS port of mta-sts.<domain> (tests use another)
  std::chrono::seconds mta_sts_timeout{10};  // DNS + HTTPS fetch of one policy
  // Secondary-MX role: MX host names that are this cluster (besides
  // `hostname`). Mail is relayed only to better-preference MX hosts; a
  // domain whose best MX is us bounces (5.4.6) instead of looping.
  std::vector<std::string> mx_self_names;
  // Connection cache (ConnectionCacheSize, ConnectionCacheTimeout): idle
  // sessions each worker keeps open for the next message to the same host.
  // Unset: as many as `concurrency`, so a session that was in use can always
  // be kept (a smaller cache closed most sessions under load and opened new
  // ones: 3,500 connections for 20,000 messages to one sink, against about
  // 100); 0: off.
  static constexpr uint32_t kCacheAsConcurrency = UINT32_MAX;
  uint32_t connection_cache_size = kCacheAsConcurrency;
  std::chrono::seconds connection_cache_timeout{10};
  // SingleThreadDelivery: at most one open connection per MX host across
  // every delivery worker of the cluster.
  bool single_thread_delivery = false;
  // Traffic shaping (delivery/include/mx/delivery/shaping.h): the built-in
  // rules for the big mailbox providers unless shaping_defaults is false,
  // amended by shaping_file (YAML, relative to mx.yaml).
  bool shaping_defaults = true;
  std::string shaping_file;
  // Egress sources and pools (none: the system picks the source address).
  std::vector<EgressSource> sources;
  std::vector<EgressPool> pools;
  DestinationLimits destination_defaults;       // every site not named by a rule (its MX set)
  std::vector<DestinationLimits> destinations;  // shared by the domains listed
  // How long a message waits for a connection slot or its turn under a
  // rate limit before it is put back for a later run (not a failure).
  std::chrono::seconds limit_wait{30};
  // Address families to deliver over: all | ipv4 | ipv6 (IPv6 tried first).
  std::string inet_protocols = "all";
  // WorkAroundBrokenAAAA: an AAAA lookup that fails temporarily (SERVFAIL,
  // timeout) counts as "no IPv6 address" instead of deferring the host.
  bool work_around_broken_aaaa = false;
  std::string mailertable;            // FEATURE(mailertable) map file
  std::vector<MailerConfig> mailers;  // esmtp, smtp, relay (smtp) and lmtp are built in
};

struct ControlConfig {
  std::string listen = "127.0.0.1:7401";
  std::vector<std::string> queue;
  // Who may call the Admin service: "tokens" (bearer tokens with roles from
  // admin_tokens_file) or "none" (anyone who reaches the port).
  std::string auth = "tokens";
  std::string admin_tokens_file;
  // TLS on the control port (both or neither); with tls_client_ca_file,
  // clients must also present a certificate signed by it (mTLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
};

struct Config {
  std::string config_dir = ".";  // directory of mx.yaml: base of relative map paths
  std::string node_name = "mx";
  std::string hostname = "localhost";  // FQDN of this node ($j)
  std::string log_level = "info";
  std::string metrics_listen = "127.0.0.1:9400";  // "" disables /metrics
  // gRPC health checking only, plaintext, for every role (Kubernetes grpc
  // probes): service "" is SERVING while the process runs, "mx.ready" while
  // it is not drained. "" (the default) disables it.
  std::string health_listen;
  IngressConfig ingress;
  QueueConfig queue;
  DeliveryConfig delivery;
  ControlConfig control;
};

// Parses YAML text; errors name the offending key. Each override is
// "key.path=value" (mxd --set), applied to the document before it is read,
// so overridden values are validated like the file's own.
Result<Config> ParseConfig(const std::string& yaml_text, const std::vector<std::string>& overrides = {});
Result<Config> LoadConfig(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace mx
