// policy.cc — acceptance checks over the loaded maps (DESIGN §6).
#include "mx/ingress/policy.h"

#include <regex.h>

#include <algorithm>
#include <set>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/map_file.h"
#include "mx/common/rfc5322.h"

namespace mx::ingress {
namespace {

constexpr int kMaxExpansionDepth = 10;
constexpr size_t kMaxExpansion = 1000;  // addresses one recipient may expand to
constexpr size_t kMaxHeaderValue = size_t{16} * 1024;

std::string ResolvePath(const std::string& dir, const std::string& path) {
  if (path.empty() || path.front() == '/') return path;
  return dir + "/" + path;
}

std::string DescribeEntry(const AccessEntry& e) {
  return "access:" + std::to_string(e.line) + " " + e.key + " " + AccessActionName(e.action);
}

// The local part of an address routes elsewhere ("user%other", "other!user",
// "\"user@other\"") — the classic relay tricks.
bool HasRoutingLocalPart(std::string_view address) {
  auto at = address.rfind('@');
  std::string_view local = address.substr(0, at == std::string_view::npos ? address.size() : at);
  return local.find_first_of("%!@:") != std::string_view::npos;
}

bool DomainIn(std::string_view domain, const std::vector<std::string>& list, bool subdomains) {
  for (const auto& d : list) {
    if (subdomains ? InDomain(domain, d) : domain == d) return true;
  }
  return false;
}

std::string LocalPart(std::string_view address) {
  auto at = address.rfind('@');
  return std::string(address.substr(0, at == std::string_view::npos ? address.size() : at));
}

// Header block → (lower-case name, unfolded value) pairs.
std::vector<std::pair<std::string, std::string>> UnfoldHeaders(std::string_view msg) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos < msg.size()) {
    size_t eol = msg.find('\n', pos);
    size_t next = eol == std::string_view::npos ? msg.size() : eol + 1;
    std::string_view line = msg.substr(pos, next - pos);
    pos = next;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') {
      if (!out.empty() && out.back().second.size() < kMaxHeaderValue) out.back().second.append(line);
      continue;
    }
    auto colon = line.find(':');
    if (colon == std::string_view::npos) break;  // the body started without an empty line
    out.emplace_back(ToLower(Trim(line.substr(0, colon))), std::string(Trim(line.substr(colon + 1))));
  }
  return out;
}

}  // namespace

const char* RejectReasonName(RejectReason r) {
  switch (r) {
    case RejectReason::kSyntax: return "syntax";
    case RejectReason::kSequence: return "sequence";
    case RejectReason::kSize: return "size";
    case RejectReason::kRelay: return "relay";
    case RejectReason::kTooManyRecipients: return "too_many_recipients";
    case RejectReason::kBareLf: return "bare_lf";
    case RejectReason::kQueue: return "queue_unavailable";
    case RejectReason::kErrors: return "error_limit";
    case RejectReason::kUnknownCommand: return "unknown_command";
    case RejectReason::kLineLength: return "line_length";
    case RejectReason::kAccess: return "access";
    case RejectReason::kUserUnknown: return "user_unknown";
    case RejectReason::kRedirect: return "redirect";
    case RejectReason::kHeader: return "header";
    case RejectReason::kHops: return "hops";
    case RejectReason::kDnsbl: return "dnsbl";
    case RejectReason::kAuth: return "auth";
    case RejectReason::kTls: return "tls";
    case RejectReason::kConnLimit: return "connection_limit";
    case RejectReason::kRate: return "connection_rate";
    case RejectReason::kLoad: return "load";
    case RejectReason::kStorage: return "storage";
    case RejectReason::kPrivacy: return "privacy";
    case RejectReason::kEtrn: return "etrn";
    case RejectReason::kDrain: return "drain";
    case RejectReason::kAuthRate: return "auth_rate";
    case RejectReason::kDkim: return "dkim";
    case RejectReason::kSuppressed: return "suppressed";
  }
  return "other";
}

Result<std::shared_ptr<const Policy>> Policy::FromBundle(const v1::PolicyBundle& bundle, const IngressConfig* local) {
  auto cfg = ParseConfig(bundle.yaml());
  if (!cfg.ok()) return Status(cfg.status().code(), "mx.yaml: " + cfg.status().message());
  if (local) {
    IngressConfig& in = cfg->ingress;
    in.listen = local->listen;
    in.hostname = local->hostname;
    in.threads = local->threads;
    in.tls_cert_file = local->tls_cert_file;
    in.tls_key_file = local->tls_key_file;
    in.queue = local->queue;
    in.dns_servers = local->dns_servers;
    in.dns_timeout = local->dns_timeout;
    in.loadavg_file = local->loadavg_file;
    in.enqueue_timeout = local->enqueue_timeout;
  }
  // DKIM keys are secrets: a bundle never carries them, the node keeps its own.
  cfg->ingress.dkim = local ? local->dkim : DkimConfig{};
  MapReader reader = [&bundle](const std::string& path) -> Result<std::string> {
    auto it = bundle.files().find(path);
    if (it == bundle.files().end()) return Status(Code::kNotFound, path + ": not in the pushed policy");
    return it->second;
  };
  return Load(cfg->ingress, ".", reader, bundle.version().empty() ? "unversioned" : bundle.version());
}

Result<std::shared_ptr<const Policy>> Policy::Load(const IngressConfig& config, const std::string& config_dir,
                                                   const MapReader& reader, const std::string& version) {
  std::shared_ptr<Policy> p(new Policy());
  p->settings_ = config;
  p->version_ = version;
  p->novrfy_ = p->noexpn_ = false;
  for (const auto& o : config.privacy_options) {
    if (o == "novrfy") p->novrfy_ = true;
    if (o == "noexpn") p->noexpn_ = true;
  }
  auto nets = CidrList::Parse(config.mynetworks);
  if (!nets.ok()) return Status(Code::kInvalidArgument, "ingress.mynetworks: " + nets.status().message());
  p->mynetworks_ = *nets;

  p->local_domains_.push_back(ToLower(config.hostname));
  for (const auto& d : config.local_domains) p->local_domains_.push_back(ToLower(d));
  for (const auto& d : config.relay_domains) p->relay_domains_.push_back(ToLower(d));

  // Loads one map file (if configured): parse(text, name) gives the map,
  // store(map) keeps it and returns its entry count for Describe().
  auto load = [&](const char* key, const std::string& path, const char* label, auto parse, auto store) -> Status {
    if (path.empty()) return Status::Ok();
    std::string full = reader ? path : ResolvePath(config_dir, path);
    auto text = reader ? reader(path) : ReadMapFile(full);
    if (!text.ok())
      return Status(Code::kInvalidArgument, std::string("ingress.") + key + ": " + text.status().message());
    auto parsed = parse(*text, full);
    if (!parsed.ok()) return parsed.status();
    size_t n = store(std::move(*parsed));
    p->sources_.push_back(std::string(label) + "=" + full + " (" + std::to_string(n) + ")");
    return Status::Ok();
  };
  auto append_to = [](std::vector<std::string>* list) {
    return [list](std::vector<std::string> names) {
      list->insert(list->end(), names.begin(), names.end());
      return names.size();
    };
  };
  Status st = load("local_domains_file", config.local_domains_file, "local-host-names", ParseClassFile,
                   append_to(&p->local_domains_));
  if (st.ok()) {
    st = load("relay_domains_file", config.relay_domains_file, "relay-domains", ParseClassFile,
              append_to(&p->relay_domains_));
  }
  if (st.ok()) {
    st = load("access_map", config.access_map, "access", AccessMap::Parse, [&](AccessMap m) {
      p->access_ = std::move(m);
      return p->access_.size();
    });
  }
  if (st.ok()) {
    st = load("aliases", config.aliases, "aliases", AliasMap::Parse, [&](AliasMap m) {
      p->aliases_ = std::move(m);
      return p->aliases_.size();
    });
  }
  if (st.ok()) {
    st = load("virtusertable", config.virtusertable, "virtusertable", VirtuserTable::Parse, [&](VirtuserTable m) {
      p->virtusers_ = std::move(m);
      return p->virtusers_.size();
    });
  }
  if (st.ok()) {
    st = load("auth_users_file", config.auth_users_file, "auth-users", AuthUsers::Parse, [&](AuthUsers m) {
      p->auth_users_ = std::move(m);
      return p->auth_users_->size();
    });
  }
  if (!st.ok()) return st;
  auto dkim = DkimSigner::Load(config.dkim);
  if (!dkim.ok()) return dkim.status();
  p->dkim_ = std::move(dkim).value();
  if (!p->dkim_->empty()) p->sources_.push_back("dkim=" + std::to_string(p->dkim_->size()) + " keys");

  for (size_t i = 0; i < config.header_checks.size(); ++i) {
    const auto& hc = config.header_checks[i];
    HeaderRule rule;
    rule.origin = "ingress.header_checks[" + std::to_string(i) + "]";
    rule.header = ToLower(hc.header);
    rule.pattern = hc.match == "regex" ? hc.pattern : ToLower(hc.pattern);  // exact/prefix compare lower-case
    auto reply = NormalizeReply(hc.reply, "7.1", "Message content rejected");
    if (!reply.ok()) return Status(Code::kInvalidArgument, rule.origin + ".reply: " + reply.status().message());
    rule.reply = *reply;
    if (hc.match == "exact") {
      rule.match = HeaderRule::Match::kExact;
    } else if (hc.match == "prefix") {
      rule.match = HeaderRule::Match::kPrefix;
    } else {
      rule.match = HeaderRule::Match::kRegex;
      auto* re = new regex_t;
      int rc = regcomp(re, hc.pattern.c_str(), REG_EXTENDED | REG_ICASE | REG_NOSUB);
      if (rc != 0) {
        char buf[256];
        regerror(rc, re, buf, sizeof buf);
        delete re;
        return Status(Code::kInvalidArgument, rule.origin + ".pattern: " + buf);
      }
      rule.regex = std::shared_ptr<void>(re, [](void* r) {
        regfree(static_cast<regex_t*>(r));
        delete static_cast<regex_t*>(r);
      });
    }
    p->header_rules_.push_back(std::move(rule));
  }
  for (const auto& z : config.dnsbl) {
    Dnsbl d;
    d.config = z;
    d.config.zone = ToLower(z.zone);
    auto block = CidrList::Parse(z.block.empty() ? std::vector<std::string>{"127.0.0.0/8"} : z.block);
    auto pass = CidrList::Parse(z.pass);
    if (!block.ok() || !pass.ok()) {
      return Status(Code::kInvalidArgument,
                    "ingress.dnsbl " + z.zone + ": " + (block.ok() ? pass.status() : block.status()).message());
    }
    d.block = *block;
    d.pass = *pass;
    if (!z.pass.empty() && z.block.empty()) d.block = *CidrList::Parse({});  // an allow list blocks nothing
    auto reply = NormalizeReply(z.reply, "7.1", "Service unavailable");
    if (!reply.ok())
      return Status(Code::kInvalidArgument, "ingress.dnsbl " + z.zone + ".reply: " + reply.status().message());
    p->dnsbl_zone_names_.push_back(d.config.zone);
    p->dnsbl_.push_back(std::move(d));
  }
  if (!p->aliases_.Find("postmaster") && (!config.local_domains.empty() || !config.local_domains_file.empty())) {
    log::Warn("policy: no 'postmaster' alias; mail to postmaster@<local domain> is queued unchanged");
  }
  return std::shared_ptr<const Policy>(std::move(p));
}

std::string Policy::Describe() const {
  std::string s = "version=" + version_ + " local_domains=" + std::to_string(local_domains_.size()) +
                  " relay_domains=" + std::to_string(relay_domains_.size()) +
                  " header_checks=" + std::to_string(header_rules_.size());
  for (const auto& src : sources_) s += " " + src;
  return s;
}

bool Policy::IsLocalDomain(std::string_view domain) const {
  return DomainIn(ToLower(domain), local_domains_, false);
}

bool Policy::IsRelayDomain(std::string_view domain) const {
  return DomainIn(ToLower(domain), relay_domains_, true);
}

Verdict Policy::CheckConnect(const ClientInfo& client) const {
  Verdict v;
  if (const auto* e = access_.LookupConnect(client.addr, client.name)) {
    v.why = DescribeEntry(*e);
    switch (e->action) {
      case AccessAction::kOk: v.kind = Verdict::Kind::kOk; return v;
      case AccessAction::kRelay: v.kind = Verdict::Kind::kRelay; return v;
      case AccessAction::kDiscard: v.kind = Verdict::Kind::kDiscard; return v;
      case AccessAction::kReject:
        v.kind = Verdict::Kind::kReject;
        v.reply = "550 5.7.1 Access denied for " + client.name + " [" + client.addr + "]";
        return v;
      case AccessAction::kError:
        v.kind = Verdict::Kind::kReject;
        v.reply = e->reply;
        return v;
      case AccessAction::kSkip: break;
    }
  }
  if (mynetworks_.Contains(client.addr)) {
    v.kind = Verdict::Kind::kRelay;
    v.why = "mynetworks";
  }
  return v;
}

std::vector<std::string> Policy::DnsblZonesFor(const Verdict& by_address) const {
  return by_address.kind == Verdict::Kind::kNone ? dnsbl_zone_names_ : std::vector<std::string>{};
}

Verdict Policy::FinishConnect(ClientInfo* client, Verdict connect, const ClientFacts& facts, bool reverse) const {
  if (reverse) {
    client->name = facts.name;
    connect = CheckConnect(*client);  // host name keys may match now
  }
  if (connect.kind == Verdict::Kind::kNone) connect = CheckDnsbl(*client, facts);
  return connect;
}

Verdict Policy::CheckDnsbl(const ClientInfo& client, const ClientFacts& facts) const {
  Verdict v;
  for (size_t i = 0; i < dnsbl_.size() && i < facts.dnsbl.size(); ++i) {
    const auto& z = dnsbl_[i];
    const auto& a = facts.dnsbl[i];
    if (a.kind != DnsblAnswer::Kind::kListed) continue;  // not listed, or DNS failed: a pass
    for (const auto& addr : a.addrs) {
      if (z.pass.Contains(addr)) {
        v.kind = Verdict::Kind::kOk;
        v.why = "dnsbl " + z.config.zone + " pass (" + addr + ")";
        return v;
      }
    }
    for (const auto& addr : a.addrs) {
      if (!z.block.Contains(addr)) continue;
      std::string reply = z.config.reply;
      auto fill = [&](const std::string& key, const std::string& value) {
        for (size_t pos; (pos = reply.find(key)) != std::string::npos;) reply.replace(pos, key.size(), value);
      };
      fill("{client}", client.addr);
      fill("{zone}", z.config.zone);
      fill("{answer}", addr);
      v.kind = Verdict::Kind::kReject;
      v.reason = RejectReason::kDnsbl;
      v.reply = *NormalizeReply(reply, "7.1", "Service unavailable");
      v.why = "dnsbl " + z.config.zone + " listed (" + addr + ")";
      return v;
    }
  }
  return v;
}

Verdict Policy::CheckSender(std::string_view sender) const {
  Verdict v;
  const auto* e = access_.LookupAddress("From", sender);
  if (!e) return v;
  v.why = DescribeEntry(*e);
  switch (e->action) {
    case AccessAction::kOk:
    case AccessAction::kRelay:  // From: RELAY never allows relaying (senders are forgeable)
      v.kind = Verdict::Kind::kOk;
      break;
    case AccessAction::kDiscard: v.kind = Verdict::Kind::kDiscard; break;
    case AccessAction::kReject:
      v.kind = Verdict::Kind::kReject;
      v.reply = "550 5.7.1 <" + std::string(sender) + ">: Sender address rejected: Access denied";
      break;
    case AccessAction::kError:
      v.kind = Verdict::Kind::kReject;
      v.reply = e->reply;
      break;
    case AccessAction::kSkip: break;
  }
  return v;
}

RecipientVerdict Policy::CheckRecipient(std::string_view rcpt_view, bool trusted) const {
  RecipientVerdict v;
  const std::string rcpt(rcpt_view);
  const std::string domain = DomainOf(rcpt);
  bool relay_ok = trusted;
  if (const auto* e = access_.LookupAddress("To", rcpt)) {
    v.why = DescribeEntry(*e);
    switch (e->action) {
      case AccessAction::kReject:
        v.kind = Verdict::Kind::kReject;
        v.reply = "550 5.7.1 <" + rcpt + ">: Recipient address rejected: Access denied";
        return v;
      case AccessAction::kError:
        v.kind = Verdict::Kind::kReject;
        v.reply = e->reply;
        return v;
      case AccessAction::kDiscard:
        v.kind = Verdict::Kind::kDiscard;
        v.addresses = {rcpt};
        return v;
      case AccessAction::kRelay: relay_ok = true; break;
      case AccessAction::kOk:
      case AccessAction::kSkip: break;
    }
  }
  const bool local = IsLocalDomain(domain);
  const bool virtual_domain = virtusers_.HasDomain(domain);
  const bool relay_domain = IsRelayDomain(domain);
  // Source routes were stripped by the parser; what remains of the classic
  // tricks lives in the local part. Only trusted clients may route that way.
  if (HasRoutingLocalPart(rcpt) && !trusted) {
    v.kind = Verdict::Kind::kReject;
    v.reason = RejectReason::kRelay;
    v.reply = "550 5.7.1 <" + rcpt + ">: Relaying denied";
    v.why += (v.why.empty() ? "" : "; ") + std::string("routing characters in local part");
    return v;
  }
  if (!local && !virtual_domain) {
    if (!relay_ok && !relay_domain) {
      v.kind = Verdict::Kind::kReject;
      v.reason = RejectReason::kRelay;
      v.reply = "550 5.7.1 <" + rcpt + ">: Relaying denied";
      v.why += (v.why.empty() ? "" : "; ") + std::string("not a local or relay domain, client not trusted");
      return v;
    }
    v.kind = Verdict::Kind::kRelay;
    v.addresses = {rcpt};
    if (v.why.empty()) v.why = relay_domain ? "relay domain " + domain : "trusted client";
    return v;
  }
  Expansion x = Expand(rcpt, 0);
  if (!x.via.empty()) v.why += (v.why.empty() ? "" : "; ") + x.via;
  switch (x.kind) {
    case Expansion::Kind::kAddresses:
      v.kind = Verdict::Kind::kOk;
      v.addresses = std::move(x.addresses);
      return v;
    case Expansion::Kind::kRedirect:
      v.kind = Verdict::Kind::kReject;
      v.reason = RejectReason::kRedirect;
      v.reply = "551 5.1.6 User has moved; please try <" + x.addresses.front() + ">";
      return v;
    case Expansion::Kind::kError:
      v.kind = Verdict::Kind::kReject;
      v.reason = x.reply.starts_with("554 5.4.6") ? RejectReason::kHops : RejectReason::kUserUnknown;
      v.reply = x.reply;
      return v;
    case Expansion::Kind::kUnknown: break;
  }
  if (local && ToLower(LocalPart(rcpt)) == "postmaster") {  // RFC 5321 4.5.1: always accepted
    v.kind = Verdict::Kind::kOk;
    v.addresses = {rcpt};
    v.why += (v.why.empty() ? "" : "; ") + std::string("postmaster");
    return v;
  }
  v.kind = Verdict::Kind::kReject;
  v.reason = RejectReason::kUserUnknown;
  v.reply = "550 5.1.1 <" + rcpt + ">: Recipient address rejected: User unknown";
  v.why += (v.why.empty() ? "" : "; ") + std::string("no virtusertable or aliases entry");
  return v;
}

// Rewrites an address in a local or virtual domain; addresses elsewhere are final.
Expansion Policy::Expand(const std::string& address, int depth) const {
  Expansion out;
  if (depth > kMaxExpansionDepth) {
    out.kind = Expansion::Kind::kError;
    out.reply = "554 5.4.6 <" + address + ">: Aliasing loop";
    return out;
  }
  const std::string domain = DomainOf(address);
  const bool local = IsLocalDomain(domain);
  if (virtusers_.HasDomain(domain)) {
    if (auto e = virtusers_.Lookup(address)) {
      out.via = "virtusertable:" + std::to_string(e->line);
      const std::string& t = e->target;
      if (t.starts_with("error:")) {
        out.kind = Expansion::Kind::kError;
        out.reply = t.substr(6);
        return out;
      }
      if (ToLower(t).ends_with(".redirect")) {
        out.kind = Expansion::Kind::kRedirect;
        out.addresses = {t.substr(0, t.size() - 9)};
        return out;
      }
      if (t.find('@') == std::string::npos) {  // a local name: continue in aliases
        ExpandAlias(t, depth + 1, &out);
        if (out.kind == Expansion::Kind::kUnknown) {
          out.kind = Expansion::Kind::kError;
          out.reply = "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown";
        }
        return out;
      }
      std::string td = DomainOf(t);
      if (ToLower(t) != ToLower(address) && (IsLocalDomain(td) || virtusers_.HasDomain(td))) {
        Expansion inner = Expand(t, depth + 1);
        inner.via = out.via + " " + inner.via;
        return inner;
      }
      out.kind = Expansion::Kind::kAddresses;
      out.addresses = {t};
      return out;
    }
    if (!local) return out;  // a virtual domain without a matching entry: unknown user
  }
  if (!local) {
    out.kind = Expansion::Kind::kAddresses;
    out.addresses = {address};
    return out;
  }
  ExpandAlias(LocalPart(address), depth + 1, &out);
  return out;
}

// Expands a local name through aliases (user+detail falls back to user).
void Policy::ExpandAlias(const std::string& local, int depth, Expansion* out) const {
  const AliasMap::Entry* e = aliases_.Find(local);
  if (!e) {
    auto plus = local.find('+');
    if (plus != std::string::npos) e = aliases_.Find(local.substr(0, plus));
  }
  if (!e) return;
  out->via += (out->via.empty() ? "" : " ") + std::string("aliases:") + std::to_string(e->line);
  std::set<std::string> seen(out->addresses.begin(), out->addresses.end());
  for (const auto& t : e->targets) {
    if (t.starts_with("error:")) {
      out->kind = Expansion::Kind::kError;
      out->reply = t.substr(6);
      out->addresses.clear();
      return;
    }
    if (ToLower(t).ends_with(".redirect")) {
      out->kind = Expansion::Kind::kRedirect;
      out->addresses = {t.substr(0, t.size() - 9)};
      return;
    }
    std::vector<std::string> found;
    if (t.find('@') == std::string::npos) {
      if (depth > kMaxExpansionDepth) {
        out->kind = Expansion::Kind::kError;
        out->reply = "554 5.4.6 <" + t + ">: Aliasing loop";
        return;
      }
      Expansion sub;
      ExpandAlias(t, depth + 1, &sub);
      if (sub.kind == Expansion::Kind::kError || sub.kind == Expansion::Kind::kRedirect) {
        *out = std::move(sub);
        return;
      }
      found = std::move(sub.addresses);
    } else {
      std::string td = DomainOf(t);
      if (IsLocalDomain(td) || virtusers_.HasDomain(td)) {
        Expansion sub = Expand(t, depth + 1);
        if (sub.kind == Expansion::Kind::kError || sub.kind == Expansion::Kind::kRedirect) {
          *out = std::move(sub);
          return;
        }
        if (sub.kind == Expansion::Kind::kUnknown) {
          if (ToLower(LocalPart(t)) != "postmaster") {
            out->kind = Expansion::Kind::kError;
            out->reply = "550 5.1.1 <" + t + ">: Recipient address rejected: User unknown";
            out->addresses.clear();
            return;
          }
          sub.addresses = {t};
        }
        found = std::move(sub.addresses);
      } else {
        found = {t};
      }
    }
    for (auto& a : found) {
      if (seen.insert(a).second) out->addresses.push_back(std::move(a));
      if (out->addresses.size() > kMaxExpansion) {
        out->kind = Expansion::Kind::kError;
        out->reply = "550 5.7.0 <" + local + ">: Alias expands to too many recipients";
        out->addresses.clear();
        return;
      }
    }
  }
  out->kind = Expansion::Kind::kAddresses;
}

Verdict Policy::CheckHeaders(std::string_view message) const {
  Verdict v;
  auto headers = UnfoldHeaders(message);
  int received = 0;
  for (const auto& [name, value] : headers) {
    if (name == "received") ++received;
    std::string lower;  // the value lower-cased, made once for the exact/prefix rules that need it
    for (const auto& r : header_rules_) {
      if (r.header != name) continue;
      if (r.match != HeaderRule::Match::kRegex && lower.empty()) lower = ToLower(value);
      bool hit = false;
      switch (r.match) {
        case HeaderRule::Match::kExact: hit = lower == r.pattern; break;
        case HeaderRule::Match::kPrefix: hit = lower.starts_with(r.pattern); break;
        case HeaderRule::Match::kRegex:
          hit = regexec(static_cast<const regex_t*>(r.regex.get()), value.c_str(), 0, nullptr, 0) == 0;
          break;
      }
      if (hit) {
        v.kind = Verdict::Kind::kReject;
        v.reason = RejectReason::kHeader;
        v.reply = r.reply;
        v.why = r.origin + " " + name + ": " + value.substr(0, 80);
        return v;
      }
    }
  }
  if (received + 1 > static_cast<int>(settings_.max_hop_count)) {  // counting the Received: we add
    v.kind = Verdict::Kind::kReject;
    v.reason = RejectReason::kHops;
    v.reply = "554 5.4.6 Too many hops " + std::to_string(received + 1) + " (" +
              std::to_string(settings_.max_hop_count) + " max)";
    v.why = "MaxHopCount";
  }
  return v;
}

}  // namespace mx::ingress
