// config.cc — mx.yaml parsing and validation.
#include "mx/common/config.h"

#include <yaml-cpp/yaml.h>

#include "mx/common/cidr.h"
#include "mx/common/yaml_reader.h"

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

namespace mx {
namespace {

using yaml::ConfigError;
using yaml::Fail;
using yaml::Reader;

void CheckHostPort(const std::string& key, const std::string& v) {
  if (v.empty()) return;
  auto r = ParseHostPort(v);
  if (!r.ok()) Fail(key, r.status().message());
}

// ingress.header_checks: [{header, match, pattern, reply}]
void HeaderChecks(const YAML::Node& hc, std::vector<HeaderCheck>* out) {
  if (!hc.IsDefined()) return;
  if (!hc.IsSequence()) Fail("ingress.header_checks", "expected a list of {header, match, pattern, reply}");
  size_t i = 0;
  for (const auto& h : hc) {
    const std::string key = "ingress.header_checks[" + std::to_string(i++) + "]";
    Reader hr(h, key);
    HeaderCheck check;
    hr.Str("header", &check.header);
    hr.Str("match", &check.match);
    hr.Str("pattern", &check.pattern);
    hr.Str("reply", &check.reply);
    if (check.header.empty() || check.pattern.empty() || check.reply.empty()) {
      Fail(key, "needs header, pattern and reply");
    }
    if (check.match != "exact" && check.match != "prefix" && check.match != "regex") {
      Fail(key + ".match", "expected exact, prefix or regex, got '" + check.match + "'");
    }
    out->push_back(std::move(check));
  }
}

// ingress.dnsbl: [{zone, block, pass, reply}]
void Dnsbl(const YAML::Node& zl, std::vector<DnsblZone>* out) {
  if (!zl.IsDefined()) return;
  if (!zl.IsSequence()) Fail("ingress.dnsbl", "expected a list of {zone, block, pass, reply}");
  size_t i = 0;
  for (const auto& z : zl) {
    const std::string key = "ingress.dnsbl[" + std::to_string(i++) + "]";
    Reader zr(z, key);
    DnsblZone zone;
    zr.Str("zone", &zone.zone);
    zr.StrList("block", &zone.block);
    zr.StrList("pass", &zone.pass);
    zr.Str("reply", &zone.reply);
    if (zone.zone.empty()) Fail(key + ".zone", "is required");
    for (const auto* list : {&zone.block, &zone.pass}) {
      if (auto nets = CidrList::Parse(*list); !nets.ok()) Fail(key, nets.status().message());
    }
    out->push_back(std::move(zone));
  }
}

// ingress.dkim: {keys: [{domain, selector, key_file}], headers, oversign, signature_ttl}
void Dkim(const YAML::Node& dk, DkimConfig* out) {
  if (!dk.IsDefined()) return;
  Reader dr(dk, "ingress.dkim");
  if (auto keys = dr.Child("keys"); keys.IsDefined()) {
    if (!keys.IsSequence()) Fail("ingress.dkim.keys", "expected a list of {domain, selector, key_file}");
    size_t i = 0;
    for (const auto& k : keys) {
      const std::string key = "ingress.dkim.keys[" + std::to_string(i++) + "]";
      Reader kr(k, key);
      DkimKey dkey;
      kr.Str("domain", &dkey.domain);
      kr.Str("selector", &dkey.selector);
      kr.Str("key_file", &dkey.key_file);
      if (dkey.domain.empty() || dkey.selector.empty() || dkey.key_file.empty()) {
        Fail(key, "needs domain, selector and key_file");
      }
      for (char ch : dkey.selector) {
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.' && ch != '_') {
          Fail(key + ".selector", "'" + dkey.selector + "' is not a DNS label sequence");
        }
      }
      for (char ch : dkey.domain) {
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.') {
          Fail(key + ".domain", "'" + dkey.domain + "' is not a domain name");
        }
      }
      out->keys.push_back(std::move(dkey));
    }
  }
  dr.StrList("headers", &out->headers);
  dr.Bool("oversign", &out->oversign);
  dr.Duration("signature_ttl", &out->signature_ttl);
  for (const auto& h : out->headers) {
    if (h.empty() || h.find_first_of(": \t") != std::string::npos) {
      Fail("ingress.dkim.headers", "'" + h + "' is not a header name");
    }
  }
}

// ingress: the SMTP server and its acceptance policy.
void Ingress(const YAML::Node& node, Config& c) {
  Reader in(node, "ingress");
  in.Str("listen", &c.ingress.listen);
  in.Str("hostname", &c.ingress.hostname);
  in.Str("greeting", &c.ingress.greeting);
  in.Bytes("max_message_size", &c.ingress.max_message_size);
  in.Uint("max_recipients_per_message", &c.ingress.max_recipients_per_message);
  in.Uint("max_line_length", &c.ingress.max_line_length);
  in.Uint("max_errors", &c.ingress.max_errors);
  in.Duration("command_timeout", &c.ingress.command_timeout);
  in.Duration("data_timeout", &c.ingress.data_timeout);
  in.Duration("enqueue_timeout", &c.ingress.enqueue_timeout);
  in.Duration("backpressure_latency", &c.ingress.backpressure_latency);
  in.Duration("backpressure_hold", &c.ingress.backpressure_hold);
  in.StrList("mynetworks", &c.ingress.mynetworks);
  in.StrList("relay_domains", &c.ingress.relay_domains);
  in.Str("relay_domains_file", &c.ingress.relay_domains_file);
  in.StrList("local_domains", &c.ingress.local_domains);
  in.Str("local_domains_file", &c.ingress.local_domains_file);
  in.Str("access_map", &c.ingress.access_map);
  in.Str("aliases", &c.ingress.aliases);
  in.Str("virtusertable", &c.ingress.virtusertable);
  HeaderChecks(in.Child("header_checks"), &c.ingress.header_checks);
  in.StrList("privacy_options", &c.ingress.privacy_options);
  in.Uint("max_hop_count", &c.ingress.max_hop_count);
  in.Uint("max_connections", &c.ingress.max_connections);
  in.Uint("max_connections_per_ip", &c.ingress.max_connections_per_ip);
  in.Uint("connection_rate_per_ip", &c.ingress.connection_rate_per_ip);
  in.Double("refuse_la", &c.ingress.refuse_la);
  in.Double("queue_la", &c.ingress.queue_la);
  in.Str("loadavg_file", &c.ingress.loadavg_file);
  in.StrList("dns_servers", &c.ingress.dns_servers);
  in.Duration("dns_timeout", &c.ingress.dns_timeout);
  in.Bool("reverse_dns", &c.ingress.reverse_dns);
  Dnsbl(in.Child("dnsbl"), &c.ingress.dnsbl);
  in.Str("tls_cert_file", &c.ingress.tls_cert_file);
  in.Str("tls_key_file", &c.ingress.tls_key_file);
  in.Str("auth_users_file", &c.ingress.auth_users_file);
  in.Bool("auth_over_plaintext", &c.ingress.auth_over_plaintext);
  in.Uint("auth_failures_per_ip", &c.ingress.auth_failures_per_ip);
  in.Uint("auth_failures_per_user", &c.ingress.auth_failures_per_user);
  in.Duration("auth_failure_window", &c.ingress.auth_failure_window);
  Dkim(in.Child("dkim"), &c.ingress.dkim);
  in.Bool("check_suppressions", &c.ingress.check_suppressions);
  in.Str("inject_listen", &c.ingress.inject_listen);
  in.Str("inject_tokens_file", &c.ingress.inject_tokens_file);
  in.StrList("queue", &c.ingress.queue);
  in.Uint("threads", &c.ingress.threads);
}

// queue.peers: [{id, grpc, raft, join}]
void Peers(const YAML::Node& peers, std::vector<QueuePeer>* out) {
  if (!peers.IsDefined()) return;
  if (!peers.IsSequence()) Fail("queue.peers", "expected a list of {id, grpc, raft}");
  size_t i = 0;
  for (const auto& p : peers) {
    const std::string key = "queue.peers[" + std::to_string(i++) + "]";
    Reader pr(p, key);
    QueuePeer peer;
    pr.Uint("id", &peer.id);
    pr.Str("grpc", &peer.grpc);
    pr.Str("raft", &peer.raft);
    pr.Bool("join", &peer.join);
    if (peer.id == 0) Fail(key + ".id", "must be > 0");
    if (peer.grpc.empty() || peer.raft.empty()) Fail(key, "needs grpc and raft addresses");
    CheckHostPort(key + ".grpc", peer.grpc);
    CheckHostPort(key + ".raft", peer.raft);
    out->push_back(std::move(peer));
  }
}

// queue: the node's replicas, Raft and scheduling.
void Queue(const YAML::Node& node, Config& c) {
  Reader q(node, "queue");
  q.Str("listen", &c.queue.listen);
  q.Str("data_dir", &c.queue.data_dir);
  q.Uint("shards", &c.queue.shards);
  q.Uint("node_id", &c.queue.node_id);
  q.Str("raft_listen", &c.queue.raft_listen);
  q.Bool("join", &c.queue.join);
  q.Duration("election_timeout", &c.queue.election_timeout);
  q.Duration("heartbeat_timeout", &c.queue.heartbeat_timeout);
  q.Uint("snapshot_threshold", &c.queue.snapshot_threshold);
  q.Uint("snapshot_trailing", &c.queue.snapshot_trailing);
  q.Bytes("raft_segment_size", &c.queue.raft_segment_size);
  q.Uint("max_inflight_entries", &c.queue.max_inflight_entries);
  q.Bool("balance_leaders", &c.queue.balance_leaders);
  Peers(q.Child("peers"), &c.queue.peers);
  q.Uint("group_commit_max_commands", &c.queue.group_commit_max_commands);
  q.Bytes("group_commit_max_bytes", &c.queue.group_commit_max_bytes);
  q.Duration("group_commit_linger", &c.queue.group_commit_linger);
  // Either set by hand: both are used as given, whatever the node hosts.
  c.queue.group_commit_tuned =
      q.Child("group_commit_linger").IsDefined() || q.Child("max_inflight_entries").IsDefined();
  q.Duration("min_backoff", &c.queue.min_backoff);
  q.Duration("max_backoff", &c.queue.max_backoff);
  q.Duration("lease_ttl", &c.queue.lease_ttl);
  q.Duration("tick_interval", &c.queue.tick_interval);
  q.Uint("pull_batch", &c.queue.pull_batch);
  q.Bytes("pull_batch_bytes", &c.queue.pull_batch_bytes);
  q.Bytes("min_free_disk", &c.queue.min_free_disk);
  q.Str("sort_order", &c.queue.sort_order);
  q.Int64("class_factor", &c.queue.class_factor);
  q.Int64("recipient_factor", &c.queue.recipient_factor);
  q.Int64("retry_factor", &c.queue.retry_factor);
}

// delivery.sources: {name: {address, ehlo, max_message_rate}}
void Sources(const YAML::Node& sl, std::vector<EgressSource>* out) {
  if (!sl.IsDefined()) return;
  if (!sl.IsMap()) Fail("delivery.sources", "expected a mapping of name: {address, ehlo, max_message_rate}");
  for (const auto& kv : sl) {
    EgressSource src;
    src.name = kv.first.as<std::string>();
    const std::string key = "delivery.sources." + src.name;
    Reader sr(kv.second, key);
    sr.Str("address", &src.address);
    sr.Str("ehlo", &src.ehlo);
    sr.Str("max_message_rate", &src.max_message_rate);
    if (src.address.empty()) Fail(key + ".address", "is required (a local IP address)");
    if (!Cidr::Parse(src.address).ok() || src.address.find('/') != std::string::npos) {
      Fail(key + ".address", "expected an IP address, got '" + src.address + "'");
    }
    if (src.name.empty() || src.name.find_first_of(" \t|@,") != std::string::npos) Fail(key, "bad source name");
    out->push_back(std::move(src));
  }
}

// delivery.pools: {name: {sources: {source: weight}, senders}}
void Pools(const YAML::Node& pl, const std::vector<EgressSource>& sources, std::vector<EgressPool>* out) {
  if (!pl.IsDefined()) return;
  if (!pl.IsMap()) Fail("delivery.pools", "expected a mapping of name: {sources: {name: weight}, senders}");
  for (const auto& kv : pl) {
    EgressPool pool;
    pool.name = kv.first.as<std::string>();
    const std::string key = "delivery.pools." + pool.name;
    Reader pr(kv.second, key);
    pr.StrList("senders", &pool.senders);
    auto srcs = pr.Child("sources");
    if (!srcs.IsDefined() || !srcs.IsMap() || srcs.size() == 0) {
      Fail(key + ".sources", "expected a mapping of source name: weight");
    }
    for (const auto& s2 : srcs) {
      const std::string name = s2.first.as<std::string>();
      uint64_t weight = 0;
      const std::string wt = s2.second.as<std::string>();
      auto [p, ec] = std::from_chars(wt.data(), wt.data() + wt.size(), weight);
      std::string where = key;
      where.append(".sources.").append(name);
      if (ec != std::errc() || p != wt.data() + wt.size() || weight == 0 || weight > 1000000) {
        Fail(where, std::string("expected a weight from 1 to 1000000, got '").append(wt).append("'"));
      }
      bool known = false;
      for (const auto& src : sources) known = known || src.name == name;
      if (!known) Fail(where, "no such source in delivery.sources");
      pool.sources.emplace_back(name, static_cast<uint32_t>(weight));
    }
    out->push_back(std::move(pool));
  }
}

// delivery.destination_defaults and delivery.destinations: per-destination limits.
void Destinations(Reader& d, DeliveryConfig* out) {
  auto limits = [](Reader& lr, DestinationLimits* out) {
    lr.Uint("max_connections", &out->max_connections);
    lr.Uint("max_messages_per_connection", &out->max_messages_per_connection);
    lr.Uint("max_messages_per_minute", &out->max_messages_per_minute);
  };
  {
    Reader dr(d.Child("destination_defaults"), "delivery.destination_defaults");
    limits(dr, &out->destination_defaults);
  }
  if (auto dl = d.Child("destinations"); dl.IsDefined()) {
    if (!dl.IsSequence()) Fail("delivery.destinations", "expected a list of {domains, max_connections, ...}");
    size_t i = 0;
    for (const auto& e : dl) {
      const std::string key = "delivery.destinations[" + std::to_string(i++) + "]";
      Reader lr(e, key);
      DestinationLimits dest;
      lr.StrList("domains", &dest.domains);
      limits(lr, &dest);
      if (dest.domains.empty()) Fail(key + ".domains", "is required");
      out->destinations.push_back(std::move(dest));
    }
  }
}

// delivery.mailers: {name: {protocol, max_message_size}}
void Mailers(const YAML::Node& ml, std::vector<MailerConfig>* out) {
  if (!ml.IsDefined()) return;
  if (!ml.IsMap()) Fail("delivery.mailers", "expected a mapping of name: {protocol, max_message_size}");
  for (const auto& kv : ml) {
    MailerConfig m;
    m.name = kv.first.as<std::string>();
    const std::string key = "delivery.mailers." + m.name;
    Reader mr(kv.second, key);
    mr.Str("protocol", &m.protocol);
    mr.Bytes("max_message_size", &m.max_message_size);
    if (m.protocol != "smtp" && m.protocol != "lmtp") Fail(key + ".protocol", "expected smtp or lmtp");
    if (m.name.empty() || m.name == "error" || m.name.find_first_of(": \t") != std::string::npos) {
      Fail(key, "bad mailer name");
    }
    out->push_back(std::move(m));
  }
}

// delivery: the worker, its SMTP client, TLS policies, egress and shaping.
void Delivery(const YAML::Node& node, Config& c) {
  Reader d(node, "delivery");
  d.StrList("queue", &c.delivery.queue);
  d.StrList("dns_servers", &c.delivery.dns_servers);
  d.Str("helo_name", &c.delivery.helo_name);
  d.Str("smart_host", &c.delivery.smart_host);
  d.Str("fallback_mx_host", &c.delivery.fallback_mx_host);
  d.Uint("smtp_port", &c.delivery.smtp_port);
  d.Uint("concurrency", &c.delivery.concurrency);
  d.Uint("threads", &c.delivery.threads);
  d.Duration("connect_timeout", &c.delivery.connect_timeout);
  d.Duration("greeting_timeout", &c.delivery.greeting_timeout);
  d.Duration("command_timeout", &c.delivery.command_timeout);
  d.Duration("data_timeout", &c.delivery.data_timeout);
  d.Duration("dns_timeout", &c.delivery.dns_timeout);
  d.Str("double_bounce_address", &c.delivery.double_bounce_address);
  d.Str("postmaster_copy", &c.delivery.postmaster_copy);
  d.Duration("queue_warn", &c.delivery.queue_warn);
  d.Duration("queue_return", &c.delivery.queue_return);
  d.Duration("host_status_timeout", &c.delivery.host_status_timeout);
  d.Str("tls_security_level", &c.delivery.tls_security_level);
  d.StrList("tls_encrypt_domains", &c.delivery.tls_encrypt_domains);
  d.Str("tls_ca_file", &c.delivery.tls_ca_file);
  d.Duration("tls_failure_memory", &c.delivery.tls_failure_memory);
  d.Bool("mta_sts", &c.delivery.mta_sts);
  d.Bool("dane", &c.delivery.dane);
  d.Bool("suppress_hard_bounces", &c.delivery.suppress_hard_bounces);
  d.Uint("mta_sts_port", &c.delivery.mta_sts_port);
  d.Duration("mta_sts_timeout", &c.delivery.mta_sts_timeout);
  d.StrList("mx_self_names", &c.delivery.mx_self_names);
  d.Uint("connection_cache_size", &c.delivery.connection_cache_size);
  d.Duration("connection_cache_timeout", &c.delivery.connection_cache_timeout);
  d.Bool("single_thread_delivery", &c.delivery.single_thread_delivery);
  d.Duration("limit_wait", &c.delivery.limit_wait);
  d.Str("inet_protocols", &c.delivery.inet_protocols);
  d.Bool("work_around_broken_aaaa", &c.delivery.work_around_broken_aaaa);
  d.Str("mailertable", &c.delivery.mailertable);
  Sources(d.Child("sources"), &c.delivery.sources);
  Pools(d.Child("pools"), c.delivery.sources, &c.delivery.pools);
  d.Bool("shaping_defaults", &c.delivery.shaping_defaults);
  d.Str("shaping_file", &c.delivery.shaping_file);
  Destinations(d, &c.delivery);
  Mailers(d.Child("mailers"), &c.delivery.mailers);
}

// control: the Admin service.
void Control(const YAML::Node& node, Config& c) {
  Reader k(node, "control");
  k.Str("listen", &c.control.listen);
  k.StrList("queue", &c.control.queue);
  k.Str("auth", &c.control.auth);
  k.Str("admin_tokens_file", &c.control.admin_tokens_file);
  k.Str("tls_cert_file", &c.control.tls_cert_file);
  k.Str("tls_key_file", &c.control.tls_key_file);
  k.Str("tls_client_ca_file", &c.control.tls_client_ca_file);
}

// Listen addresses and DNS servers; names and servers defaulted from others.
void CheckListeners(Config& c) {
  CheckHostPort("ingress.listen", c.ingress.listen);
  CheckHostPort("queue.listen", c.queue.listen);
  CheckHostPort("control.listen", c.control.listen);
  CheckHostPort("metrics_listen", c.metrics_listen);
  if (!c.health_listen.empty()) CheckHostPort("health_listen", c.health_listen);
  for (const auto& s : c.delivery.dns_servers) CheckHostPort("delivery.dns_servers", s);
  for (const auto& s : c.ingress.dns_servers) CheckHostPort("ingress.dns_servers", s);
  if (c.ingress.dns_servers.empty()) c.ingress.dns_servers = c.delivery.dns_servers;
  if (c.ingress.hostname.empty()) c.ingress.hostname = c.hostname;
  if (c.delivery.helo_name.empty()) c.delivery.helo_name = c.hostname;
}

// queue: shards, the node and its peers, Raft timing and sizes.
void CheckQueue(Config& c) {
  CheckHostPort("queue.raft_listen", c.queue.raft_listen);
  if (c.queue.shards == 0 || c.queue.shards > 256) Fail("queue.shards", "must be between 1 and 256");
  if (c.queue.node_id == 0) Fail("queue.node_id", "must be > 0");
  if (c.queue.peers.empty() && !c.queue.join) {
    c.queue.peers.push_back(QueuePeer{c.queue.node_id, c.queue.listen, c.queue.raft_listen});
  }
  {
    std::set<uint64_t> ids;
    size_t founders = 0;
    for (const auto& p : c.queue.peers) {
      if (!p.join) ++founders;
      // A replica listed as joining never bootstraps, whatever queue.join says.
      if (p.join && p.id == c.queue.node_id) c.queue.join = true;
      if (!ids.insert(p.id).second) Fail("queue.peers", "duplicate id " + std::to_string(p.id));
      if (ParseHostPort(p.raft)->port + c.queue.shards - 1 > 65535) {
        Fail("queue.peers", "raft port of node " + std::to_string(p.id) + " leaves no room for every shard");
      }
    }
    if (founders == 0) Fail("queue.peers", "every peer has join: true; the replicas that bootstrap need join: false");
  }
  if (ParseHostPort(c.queue.raft_listen)->port + c.queue.shards - 1 > 65535) {
    Fail("queue.raft_listen", "port leaves no room for every shard (shard s listens on port + s)");
  }
  if (c.queue.heartbeat_timeout.count() <= 0 || c.queue.election_timeout <= 2 * c.queue.heartbeat_timeout) {
    Fail("queue.election_timeout", "must be more than twice queue.heartbeat_timeout");
  }
  if (c.queue.snapshot_threshold == 0) Fail("queue.snapshot_threshold", "must be > 0");
  if (c.queue.max_inflight_entries == 0) Fail("queue.max_inflight_entries", "must be > 0");
  if (c.queue.raft_segment_size < (1ULL << 20) || c.queue.raft_segment_size > (1ULL << 30))
    Fail("queue.raft_segment_size", "must be between 1M and 1G");
}

// Clients reach the queue through the peers by default.
void DefaultQueueSeeds(Config& c) {
  // Clients reach the queue through the peers by default (in a single node,
  // the local queue).
  std::vector<std::string> seeds;
  for (const auto& p : c.queue.peers) seeds.push_back(p.grpc);
  if (seeds.empty()) seeds.push_back(c.queue.listen);
  if (c.ingress.queue.empty()) c.ingress.queue = seeds;
  if (c.delivery.queue.empty()) c.delivery.queue = seeds;
  if (c.control.queue.empty()) c.control.queue = seeds;
}

// ingress: networks, sizes, privacy options, TLS, Inject, AUTH.
void CheckIngress(Config& c) {
  if (auto nets = CidrList::Parse(c.ingress.mynetworks); !nets.ok()) {
    Fail("ingress.mynetworks", nets.status().message());
  }
  if (c.ingress.max_message_size == 0) Fail("ingress.max_message_size", "must be > 0");
  if (c.ingress.max_message_size > 48ULL * 1024 * 1024) {
    Fail("ingress.max_message_size", "at most 48M is supported");
  }
  if (c.ingress.max_recipients_per_message == 0) Fail("ingress.max_recipients_per_message", "must be > 0");
  for (const auto& p : c.ingress.privacy_options) {
    if (p != "novrfy" && p != "noexpn" && p != "public") {
      Fail("ingress.privacy_options", "unknown option '" + p + "' (novrfy, noexpn, public)");
    }
  }
  if (c.ingress.tls_cert_file.empty() != c.ingress.tls_key_file.empty()) {
    Fail("ingress.tls_cert_file", "tls_cert_file and tls_key_file go together");
  }
  if (c.ingress.max_hop_count == 0) Fail("ingress.max_hop_count", "must be > 0");
  CheckHostPort("ingress.inject_listen", c.ingress.inject_listen);
  if (!c.ingress.inject_listen.empty() && c.ingress.inject_tokens_file.empty()) {
    Fail("ingress.inject_tokens_file", "inject_listen needs a tokens file (the API is never open to anyone)");
  }
  if (c.ingress.auth_failure_window.count() <= 0) Fail("ingress.auth_failure_window", "must be > 0");
  if (c.ingress.max_line_length < 512) Fail("ingress.max_line_length", "must be >= 512 (RFC 5321)");
}

// queue: backoff, leases, group commit, pulls, QueueSortOrder.
void CheckQueueScheduling(Config& c) {
  if (c.queue.min_backoff.count() <= 0) Fail("queue.min_backoff", "must be > 0");
  if (c.queue.max_backoff < c.queue.min_backoff) Fail("queue.max_backoff", "must be >= queue.min_backoff");
  if (c.queue.lease_ttl.count() <= 0) Fail("queue.lease_ttl", "must be > 0");
  if (c.queue.group_commit_max_commands == 0) Fail("queue.group_commit_max_commands", "must be > 0");
  if (c.queue.pull_batch == 0) Fail("queue.pull_batch", "must be > 0");
  if (c.queue.sort_order != "priority" && c.queue.sort_order != "time" && c.queue.sort_order != "host" &&
      c.queue.sort_order != "random") {
    Fail("queue.sort_order", "expected priority, time, host or random, got '" + c.queue.sort_order + "'");
  }
}

// delivery: concurrency, the connection cache, timeouts, TLS, address families.
void CheckDelivery(Config& c) {
  if (c.delivery.concurrency == 0) Fail("delivery.concurrency", "must be > 0");
  if (c.delivery.connection_cache_size == DeliveryConfig::kCacheAsConcurrency) {
    c.delivery.connection_cache_size = c.delivery.concurrency;
  }
  if (c.delivery.queue_return.count() <= 0) Fail("delivery.queue_return", "must be > 0");
  if (c.delivery.tls_security_level != "none" && c.delivery.tls_security_level != "may" &&
      c.delivery.tls_security_level != "encrypt") {
    Fail("delivery.tls_security_level", "expected none, may or encrypt");
  }
  if (c.delivery.mta_sts_port == 0) Fail("delivery.mta_sts_port", "must be > 0");
  if (c.delivery.mta_sts_timeout.count() <= 0) Fail("delivery.mta_sts_timeout", "must be > 0");
  if (c.delivery.inet_protocols != "all" && c.delivery.inet_protocols != "ipv4" &&
      c.delivery.inet_protocols != "ipv6") {
    Fail("delivery.inet_protocols", "expected all, ipv4 or ipv6");
  }
}

// control: auth and TLS.
void CheckControl(Config& c) {
  if (c.control.auth != "tokens" && c.control.auth != "none") Fail("control.auth", "expected tokens or none");
  if (c.control.tls_cert_file.empty() != c.control.tls_key_file.empty()) {
    Fail("control.tls_cert_file", "tls_cert_file and tls_key_file go together");
  }
  if (!c.control.tls_client_ca_file.empty() && c.control.tls_cert_file.empty()) {
    Fail("control.tls_client_ca_file", "needs tls_cert_file and tls_key_file (mTLS is on top of TLS)");
  }
}

// delivery: the limit wait and the smart and fallback hosts.
void CheckDeliveryRelays(Config& c) {
  if (c.delivery.limit_wait.count() <= 0) Fail("delivery.limit_wait", "must be > 0");
  // "[host]:port" (no MX lookup), "host:port" or "host" (port: delivery.smtp_port).
  for (auto [key, value] : {std::pair{"delivery.smart_host", &c.delivery.smart_host},
                            std::pair{"delivery.fallback_mx_host", &c.delivery.fallback_mx_host}}) {
    if (value->empty()) continue;
    if (auto hp = ParseHostPort(*value, c.delivery.smtp_port); !hp.ok()) Fail(key, hp.status().message());
  }
}

Config Parse(const YAML::Node& root) {
  Config c;
  {
    Reader r(root, "");  // unknown keys are reported when it goes, before the checks
    r.Str("node_name", &c.node_name);
    r.Str("hostname", &c.hostname);
    r.Str("log_level", &c.log_level);
    r.Str("metrics_listen", &c.metrics_listen);
    r.Str("health_listen", &c.health_listen);
    Ingress(r.Child("ingress"), c);
    Queue(r.Child("queue"), c);
    Delivery(r.Child("delivery"), c);
    Control(r.Child("control"), c);
  }
  CheckListeners(c);
  CheckQueue(c);
  DefaultQueueSeeds(c);
  CheckIngress(c);
  CheckQueueScheduling(c);
  CheckDelivery(c);
  CheckControl(c);
  CheckDeliveryRelays(c);
  return c;
}

}  // namespace

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

Result<HostPort> ParseHostPort(const std::string& text, uint16_t default_port) {
  HostPort hp;
  std::string rest;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) return Status(Code::kInvalidArgument, "missing ']' in '" + text + "'");
    hp.host = text.substr(1, close - 1);
    rest = text.substr(close + 1);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) {
      hp.host = text;
    } else {
      hp.host = text.substr(0, colon);
      rest = text.substr(colon);
    }
  }
  if (hp.host.empty()) return Status(Code::kInvalidArgument, "missing host in '" + text + "'");
  if (rest.empty()) {
    if (default_port == 0) return Status(Code::kInvalidArgument, "missing port in '" + text + "'");
    hp.port = default_port;
    return hp;
  }
  if (rest.front() != ':') return Status(Code::kInvalidArgument, "bad address '" + text + "'");
  unsigned v = 0;
  auto [p, ec] = std::from_chars(rest.data() + 1, rest.data() + rest.size(), v);
  if (ec != std::errc() || p != rest.data() + rest.size() || v == 0 || v > 65535) {
    return Status(Code::kInvalidArgument, "bad port in '" + text + "'");
  }
  hp.port = static_cast<uint16_t>(v);
  return hp;
}

namespace {

// Applies one "a.b.c=value" override to the parsed document before it is
// read: maps on the way are created, the value is parsed as YAML (so
// "queue.node_id=3" is a number and "ingress.mynetworks=[10.0.0.0/8]" a list).
void ApplyOverride(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) Fail("--set " + assignment, "expected key.path=value");
  const std::string path = assignment.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    Fail("--set " + path, std::string("value is not YAML: ") + e.what());
  }
  std::vector<std::string> keys;
  for (size_t start = 0;;) {
    const auto dot = path.find('.', start);
    keys.push_back(path.substr(start, dot - start));
    if (keys.back().empty()) Fail("--set " + path, "empty key");
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  // YAML::Node assignment rebinds handles, so walk with a list of nodes.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    YAML::Node next = chain.back()[keys[i]];
    if (next.IsDefined() && !next.IsNull() && !next.IsMap()) Fail("--set " + path, keys[i] + " is not a map");
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[keys[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[keys[i]];
    }
    chain.push_back(next);
  }
  chain.back()[keys.back()] = value.IsNull() ? YAML::Node(YAML::NodeType::Null) : value;
}

}  // namespace

Result<Config> ParseConfig(const std::string& yaml_text, const std::vector<std::string>& overrides) {
  try {
    YAML::Node root = YAML::Load(yaml_text);
    if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) return Status(Code::kInvalidArgument, "expected a map at the top level");
    for (const auto& o : overrides) ApplyOverride(root, o);
    return Parse(root);
  } catch (const ConfigError& e) {
    return Status(Code::kInvalidArgument, e.message);
  } catch (const YAML::Exception& e) {
    return Status(Code::kInvalidArgument, std::string("YAML: ") + e.what());
  }
}

Result<Config> LoadConfig(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) return Status(Code::kNotFound, "cannot read config file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto r = ParseConfig(ss.str(), overrides);
  if (!r.ok()) return Status(r.status().code(), path + ": " + r.status().message());
  auto slash = path.rfind('/');
  r->config_dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  // DKIM keys stay the node's own even under a pushed policy, so their
  // paths are fixed here, relative to this file.
  for (auto& k : r->ingress.dkim.keys) {
    if (!k.key_file.empty() && k.key_file.front() != '/') k.key_file = r->config_dir + "/" + k.key_file;
  }
  return r;
}

}  // namespace mx
