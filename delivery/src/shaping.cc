// shaping.cc — site rules: parsing, layering and matching.
#include "mx/delivery/shaping.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>

#include "mx/common/address.h"
#include "mx/common/yaml_reader.h"

namespace mx::delivery {
namespace {

using yaml::ConfigError;
using yaml::Fail;
using yaml::Reader;

std::string HostName(std::string_view h) {
  std::string n = ToLower(h);
  if (!n.empty() && n.back() == '.') n.pop_back();
  return n;
}

bool MatchesHost(const std::string& pattern, const std::string& host) {
  if (pattern.front() == '.') return host.size() > pattern.size() && host.ends_with(pattern);
  return host == pattern;
}

SiteTls ParseTls(const std::string& key, const std::string& v) {
  if (v == "default") return SiteTls::kDefault;
  if (v == "none") return SiteTls::kNone;
  if (v == "may") return SiteTls::kMay;
  if (v == "required") return SiteTls::kRequired;
  Fail(key, "expected default, none, may or required, got '" + v + "'");
}

void ReadReplies(Reader& r, Shaping::Rule* rule);

// The settings of a rule (in "default" or a site), each only if given.
void ReadSettings(Reader& r, Shaping::Rule* rule) {
  if (r.Child("max_connections").IsDefined()) {
    r.Uint("max_connections", &rule->max_connections);
    rule->has_max_connections = true;
  }
  if (r.Child("max_messages_per_connection").IsDefined()) {
    r.Uint("max_messages_per_connection", &rule->max_messages_per_connection);
    rule->has_max_messages_per_connection = true;
  }
  auto rate = [&](const char* k, RateLimit* out, bool* has) {
    std::string v;
    r.Str(k, &v);
    if (v.empty()) return;
    auto parsed = ParseRate(v);
    if (!parsed.ok()) Fail(r.Key(k), parsed.status().message());
    *out = *parsed;
    *has = true;
  };
  rate("max_message_rate", &rule->message_rate, &rule->has_message_rate);
  rate("max_connection_rate", &rule->connection_rate, &rule->has_connection_rate);
  std::string tls;
  r.Str("tls", &tls);
  if (!tls.empty()) {
    rule->tls = ParseTls(r.Key("tls"), tls);
    rule->has_tls = true;
  }
  ReadReplies(r, rule);
}

void ReadReplies(Reader& r, Shaping::Rule* rule) {
  YAML::Node list = r.Child("replies");
  if (!list.IsDefined()) return;
  const std::string key = r.Key("replies");
  if (!list.IsSequence()) Fail(key, "expected a list of {match, action, duration, ...}");
  rule->has_replies = true;
  rule->replies.clear();  // a later layer's list replaces the earlier one
  size_t i = 0;
  for (const auto& e : list) {
    const std::string k = key + "[" + std::to_string(i++) + "]";
    Reader rr(e, k);
    ReplyRule rep;
    rr.Str("match", &rep.match);
    if (rep.match.empty()) Fail(k + ".match", "is required (a regular expression searched in the reply)");
    try {
      rep.re = std::make_shared<const std::regex>(rep.match,
                                                  std::regex::ECMAScript | std::regex::icase | std::regex::optimize);
    } catch (const std::regex_error& err) {
      Fail(k + ".match", std::string("not a regular expression: ") + err.what());
    }
    std::string action = "suspend";
    rr.Str("action", &action);
    if (action != "suspend" && action != "slow") Fail(k + ".action", "expected suspend or slow, got '" + action + "'");
    rep.suspend = action == "suspend";
    std::chrono::seconds duration{0};
    rr.Duration("duration", &duration);
    if (duration.count() <= 0 || duration > std::chrono::hours(24 * 30)) {
      Fail(k + ".duration", "is required, from 1s to 30d");
    }
    rep.duration_s = static_cast<uint32_t>(duration.count());
    rr.Uint("max_connections", &rep.max_connections);
    std::string rate;
    rr.Str("max_message_rate", &rate);
    if (!rate.empty()) {
      auto parsed = ParseRate(rate);
      if (!parsed.ok()) Fail(k + ".max_message_rate", parsed.status().message());
      rep.message_rate = *parsed;
    }
    if (rep.suspend && (rep.max_connections || !rep.message_rate.none())) {
      Fail(k, "max_connections and max_message_rate belong to action: slow");
    }
    if (!rep.suspend && !rep.max_connections && rep.message_rate.none()) {
      Fail(k, "action: slow needs max_connections or max_message_rate");
    }
    rule->replies.push_back(std::move(rep));
  }
}

// Fields given in `over` replace those of `base`.
void Amend(Shaping::Rule* base, const Shaping::Rule& over) {
  if (!over.mx.empty()) base->mx = over.mx;
  if (!over.domains.empty()) base->domains = over.domains;
  if (over.has_max_connections) base->max_connections = over.max_connections, base->has_max_connections = true;
  if (over.has_max_messages_per_connection) {
    base->max_messages_per_connection = over.max_messages_per_connection;
    base->has_max_messages_per_connection = true;
  }
  if (over.has_message_rate) base->message_rate = over.message_rate, base->has_message_rate = true;
  if (over.has_connection_rate) base->connection_rate = over.connection_rate, base->has_connection_rate = true;
  if (over.has_tls) base->tls = over.tls, base->has_tls = true;
  if (over.has_replies) base->replies = over.replies, base->has_replies = true;
}

bool ValidPattern(const std::string& p) {
  if (p.empty() || p == ".") return false;
  for (unsigned char c : p) {
    if (!std::isalnum(c) && c != '-' && c != '.' && c != '_') return false;
  }
  return p.find("..") == std::string::npos && p.back() != '.';
}

void ParseLayer(const std::string& text, Shaping::Rule* defaults, std::vector<Shaping::Rule>* rules) {
  YAML::Node root = YAML::Load(text);
  if (!root || root.IsNull()) return;
  Reader top(root, "");
  {
    Reader d(top.Child("default"), "default");
    ReadSettings(d, defaults);
  }
  YAML::Node sites = top.Child("sites");
  if (!sites.IsDefined()) return;
  if (!sites.IsMap()) Fail("sites", "expected a mapping of site name: {mx, domains, limits...}");
  for (const auto& kv : sites) {
    Shaping::Rule rule;
    rule.name = kv.first.as<std::string>();
    const std::string key = "sites." + rule.name;
    if (rule.name.empty() || rule.name.starts_with("mx:") || rule.name.find_first_of(" \t|,") != std::string::npos) {
      Fail(key, "bad site name (no spaces, '|' or ',', and not starting with mx:)");
    }
    Reader r(kv.second, key);
    r.StrList("mx", &rule.mx);
    r.StrList("domains", &rule.domains);
    for (auto* list : {&rule.mx, &rule.domains}) {
      for (auto& p : *list) {
        p = ToLower(p);
        if (!ValidPattern(p)) Fail(key, "bad host or domain '" + p + "'");
      }
    }
    ReadSettings(r, &rule);
    auto same = std::find_if(rules->begin(), rules->end(), [&](const auto& x) { return x.name == rule.name; });
    if (same != rules->end()) {
      Amend(&*same, rule);
    } else {
      if (rule.mx.empty() && rule.domains.empty()) Fail(key, "needs mx (host suffixes) or domains");
      rules->push_back(std::move(rule));
    }
  }
}

}  // namespace

const ReplyRule* SiteShape::MatchReply(std::string_view reply) const {
  for (const auto* list : {site_replies, default_replies}) {
    if (!list) continue;
    for (const auto& r : *list) {
      if (std::regex_search(reply.begin(), reply.end(), *r.re)) return &r;
    }
  }
  return nullptr;
}

std::string RateLimit::ToString() const {
  if (count == 0) return "none";
  switch (period_s) {
    case 1: return std::to_string(count) + "/s";
    case 60: return std::to_string(count) + "/min";
    case 3600: return std::to_string(count) + "/h";
    case 86400: return std::to_string(count) + "/d";
    default: return std::to_string(count) + "/" + std::to_string(period_s) + "s";
  }
}

Result<RateLimit> ParseRate(std::string_view text) {
  text = Trim(text);
  if (text == "0" || text == "none") return RateLimit{0, 60};
  auto bad = [&] {
    return Status(Code::kInvalidArgument,
                  "expected a rate like 10/s, 100/min, 3000/h or 1/5s, got '" + std::string(text) + "'");
  };
  auto slash = text.find('/');
  if (slash == std::string_view::npos) return bad();
  uint32_t count = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + slash, count);
  if (ec != std::errc() || p != text.data() + slash || count == 0) return bad();
  std::string_view per = text.substr(slash + 1);
  uint32_t n = 1;
  size_t digits = 0;
  while (digits < per.size() && std::isdigit(static_cast<unsigned char>(per[digits]))) ++digits;
  if (digits > 0) {
    auto [q, ec2] = std::from_chars(per.data(), per.data() + digits, n);
    if (ec2 != std::errc() || n == 0) return bad();
  }
  std::string unit(per.substr(digits));
  uint32_t unit_s;
  if (unit == "s" || unit == "sec" || unit == "second")
    unit_s = 1;
  else if (unit == "m" || unit == "min" || unit == "minute")
    unit_s = 60;
  else if (unit == "h" || unit == "hr" || unit == "hour")
    unit_s = 3600;
  else if (unit == "d" || unit == "day")
    unit_s = 86400;
  else
    return bad();
  if (n > 86400 * 30 / unit_s) return bad();
  return RateLimit{count, n * unit_s};
}

Result<Shaping> Shaping::Load(const DeliveryConfig& config, const std::string& config_dir) {
  std::vector<std::pair<std::string, std::string>> layers;
  if (config.shaping_defaults) layers.emplace_back("built-in shaping defaults", std::string(ShippedDefaults()));
  if (!config.shaping_file.empty()) {
    std::string path = config.shaping_file;
    if (path.front() != '/') path = config_dir + "/" + path;
    std::ifstream in(path);
    if (!in) return Status(Code::kNotFound, "delivery.shaping_file: cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    layers.emplace_back(path, ss.str());
  }
  return Parse(config, layers);
}

Result<Shaping> Shaping::Parse(const DeliveryConfig& config,
                               const std::vector<std::pair<std::string, std::string>>& layers) {
  Shaping s;
  for (const auto& [name, text] : layers) {
    try {
      ParseLayer(text, &s.default_, &s.rules_);
    } catch (const ConfigError& e) {
      return Status(Code::kInvalidArgument, name + ": " + e.message);
    } catch (const YAML::Exception& e) {
      return Status(Code::kInvalidArgument, name + ": YAML: " + e.what());
    }
  }
  // delivery.destination_defaults and destinations: the same limits, named by domain.
  const auto& dd = config.destination_defaults;
  if (dd.max_connections) s.default_.max_connections = dd.max_connections;
  if (dd.max_messages_per_connection) s.default_.max_messages_per_connection = dd.max_messages_per_connection;
  if (dd.max_messages_per_minute) s.default_.message_rate = RateLimit{dd.max_messages_per_minute, 60};
  std::vector<Rule> dests;
  for (const auto& d : config.destinations) {
    Rule r;
    r.name = ToLower(d.domains.front());
    for (const auto& dom : d.domains) r.domains.push_back(ToLower(dom));
    r.max_connections = d.max_connections;
    r.max_messages_per_connection = d.max_messages_per_connection;
    r.message_rate = RateLimit{d.max_messages_per_minute, 60};
    r.has_max_connections = r.has_max_messages_per_connection = r.has_message_rate = true;
    dests.push_back(std::move(r));
  }
  s.rules_.insert(s.rules_.begin(), dests.begin(), dests.end());  // most specific first
  return s;
}

SiteShape Shaping::Shape(const Rule& r, std::string site, bool named) const {
  SiteShape out;
  out.key = "site:" + site;
  out.site = std::move(site);
  out.named = named;
  out.max_connections = r.has_max_connections ? r.max_connections : default_.max_connections;
  out.max_messages_per_connection =
      r.has_max_messages_per_connection ? r.max_messages_per_connection : default_.max_messages_per_connection;
  out.message_rate = r.has_message_rate ? r.message_rate : default_.message_rate;
  out.connection_rate = r.has_connection_rate ? r.connection_rate : default_.connection_rate;
  out.tls = r.has_tls ? r.tls : default_.tls;
  if (&r != &default_) out.site_replies = &r.replies;
  out.default_replies = &default_.replies;
  return out;
}

SiteShape Shaping::For(std::string_view domain, const std::vector<std::string>& mx_hosts) const {
  for (const auto& r : rules_) {
    for (const auto& d : r.domains) {
      if (InDomain(domain, d)) return Shape(r, r.name, true);
    }
  }
  std::vector<std::string> hosts;
  hosts.reserve(mx_hosts.size());
  for (const auto& h : mx_hosts) hosts.push_back(HostName(h));
  for (const auto& r : rules_) {
    for (const auto& p : r.mx) {
      for (const auto& h : hosts) {
        if (MatchesHost(p, h)) return Shape(r, r.name, true);
      }
    }
  }
  std::sort(hosts.begin(), hosts.end());
  hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
  std::string site = "mx:";
  for (size_t i = 0; i < hosts.size(); ++i) site += (i ? "," : "") + hosts[i];
  if (hosts.empty()) site += ToLower(domain);
  return Shape(default_, std::move(site), false);
}

}  // namespace mx::delivery
