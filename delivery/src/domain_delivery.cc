// domain_delivery.cc — route → MX → site → TLS → MTA-STS → egress → hosts → fallback.
#include "domain_delivery.h"

#include <algorithm>
#include <boost/asio.hpp>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "probe.h"

namespace mx::delivery {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using Outcomes = std::vector<Outcome>;

template <typename Token>
auto AsyncResolve(Resolver& resolver, bool mx, std::string name, Token&& token) {
  return asio::async_initiate<Token, void(MxAnswer)>(
      [&resolver, mx](auto handler, const std::string& n) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        auto done = [h, ex](MxAnswer a) { asio::post(ex, [h, a = std::move(a)]() mutable { (*h)(std::move(a)); }); };
        if (mx)
          resolver.ResolveMx(n, std::move(done));
        else
          resolver.ResolveHost(n, std::move(done));
      },
      token, std::move(name));
}

// The TLSA records of _<port>._tcp.<host>; the answer is posted to the caller's executor.
template <typename Token>
auto AsyncTlsa(Resolver& resolver, std::string host, uint16_t port, Token&& token) {
  return asio::async_initiate<Token, void(TlsaAnswer)>(
      [&resolver, port](auto handler, const std::string& h) {
        auto ex = asio::get_associated_executor(handler);
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        resolver.ResolveTlsa(h, port, [shared, ex](TlsaAnswer a) {
          asio::post(ex, [shared, a = std::move(a)]() mutable { (*shared)(std::move(a)); });
        });
      },
      token, std::move(host));
}

v1::HostOutcome HostOutcomeOf(const std::string& host, bool ok, const std::string& reply) {
  v1::HostOutcome h;
  h.set_host(host);
  h.set_ok(ok);
  h.set_reply(reply);
  return h;
}

// The session settings of `from` with the transport, EHLO name and source of `like`.
SmtpClientConfig Like(SmtpClientConfig from, const SmtpClientConfig& like) {
  from.lmtp = like.lmtp;
  from.helo_name = like.helo_name;
  from.source_address = like.source_address;
  return from;
}

}  // namespace

TlsProfiles TlsProfiles::From(const DeliveryConfig& config) {
  TlsProfiles p;
  SmtpClientConfig& c = p.base;
  c.helo_name = config.helo_name;
  c.connect_timeout = config.connect_timeout;
  c.greeting_timeout = config.greeting_timeout;
  c.command_timeout = config.command_timeout;
  c.data_timeout = config.data_timeout;
  c.tls = config.tls_security_level == "none"      ? SmtpClientConfig::Tls::kNone
          : config.tls_security_level == "encrypt" ? SmtpClientConfig::Tls::kEncrypt
                                                   : SmtpClientConfig::Tls::kMay;
  c.tls_context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  c.tls_context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                             asio::ssl::context::no_sslv3);
  c.tls_context->set_verify_mode(asio::ssl::verify_none);  // opportunistic, like Postfix may/encrypt
  p.encrypt = p.plain = p.may = c;
  p.encrypt.tls = SmtpClientConfig::Tls::kEncrypt;
  p.plain.tls = SmtpClientConfig::Tls::kNone;
  p.may.tls = SmtpClientConfig::Tls::kMay;
  return p;
}

void TlsProfiles::EnableMtaSts(std::shared_ptr<asio::ssl::context> ctx) {
  verified = encrypt;
  verified.tls_context = std::move(ctx);
  verified.verify = true;
}

void TlsProfiles::EnableDane(std::shared_ptr<asio::ssl::context> ctx) {
  dane = encrypt;
  dane.tls_context = std::move(ctx);
  dane_enabled = true;
}

DomainDelivery::DomainDelivery(const DeliveryConfig& config, const std::string& hostname, TlsProfiles profiles,
                               Parts parts)
    : config_(config), profiles_(std::move(profiles)), parts_(parts) {
  for (const auto& d : config.tls_encrypt_domains) encrypt_domains_.insert(ToLower(d));
  self_names_.insert(ToLower(hostname));
  for (const auto& n : config.mx_self_names) self_names_.insert(ToLower(n));
  if (!config.fallback_mx_host.empty()) {
    auto hp = ParseHostPort(config.fallback_mx_host, config.smtp_port);  // validated by ParseConfig
    fallback_ = Relay{hp.ok() ? hp->host : config.fallback_mx_host, hp.ok() ? hp->port : config.smtp_port,
                      config.fallback_mx_host.front() == '['};
  }
}

// One attempt's state: the steps below share it and may tighten the site's limits.
class DomainDelivery::Run {
 public:
  Run(const DomainDelivery& d, std::string domain, const Route& route, const v1::LeasedMessage& m,
      const std::vector<ClientRcpt>& rcpts, DomainResult* out)
      : d_(d), p_(d.parts_), domain_(std::move(domain)), route_(route), m_(m), rcpts_(rcpts), out_(out) {}

  awaitable<Outcomes> Go();

 private:
  Outcomes All(v1::Outcome o, const std::string& dsn, const std::string& text) const {
    return Outcomes(rcpts_.size(), Outcome{RcptOutcome{o, text, dsn}, "", false, "", false});
  }
  Outcomes Throttled(const std::string& text) const {
    auto out = All(v1::OUTCOME_DEFERRED, "4.4.5", text);
    for (auto& o : out) o.throttled = true;
    return out;
  }
  const std::string& qid() const { return m_.envelope().qid(); }
  std::optional<Outcomes> Prechecks() const;
  std::optional<Outcomes> Resolved(MxAnswer* ans) const;
  std::optional<Outcomes> Site(const MxAnswer& ans);
  Outcomes Suspended(const v1::SiteStatus& st) const;
  void PickTls();
  awaitable<std::optional<Outcomes>> ApplyMtaSts(MxAnswer* ans);
  void PickSource();
  awaitable<std::optional<Outcomes>> TryHosts(const MxAnswer& hosts, uint16_t port);
  // The settings for host (DANE), or none when the host must be skipped.
  awaitable<std::optional<SmtpClientConfig>> HostConfig(const MxHost& host, bool secure, uint16_t port);
  awaitable<Attempt> TryAddress(const MxHost& host, const std::string& ip, uint16_t port,
                                const SmtpClientConfig& host_cc);
  // The reply rules against an attempt's replies: outcomes when the site was suspended.
  std::optional<Outcomes> ReplyRules(const Attempt& at);

  const DomainDelivery& d_;
  const Parts& p_;
  const std::string domain_;
  const Route& route_;
  const v1::LeasedMessage& m_;
  const std::vector<ClientRcpt>& rcpts_;
  DomainResult* out_;
  SiteShape shape_;
  SmtpClientConfig base_;
  std::string last_error_ = "no usable MX host";
};

awaitable<DomainResult> DomainDelivery::Deliver(std::string domain, const Route& route, const v1::LeasedMessage& m,
                                                const std::vector<ClientRcpt>& rcpts) const {
  DomainResult out;
  Run run(*this, std::move(domain), route, m, rcpts, &out);
  auto go = run.Go();
  out.outcomes = co_await std::move(go);
  co_return out;
}

awaitable<Outcomes> DomainDelivery::Run::Go() {
  if (auto early = Prechecks()) co_return *early;
  MxAnswer ans;
  {
    const bool by_mx = route_.relay ? !route_.relay->literal : true;
    auto resolve = AsyncResolve(p_.resolver, by_mx, route_.relay ? route_.relay->host : domain_, use_awaitable);
    ans = co_await std::move(resolve);
  }
  if (auto early = Resolved(&ans)) co_return *early;
  if (auto early = Site(ans)) co_return *early;
  PickTls();
  {
    auto sts = ApplyMtaSts(&ans);
    if (auto early = co_await std::move(sts)) co_return *early;
  }
  PickSource();
  {
    auto first = TryHosts(ans, route_.relay ? route_.relay->port : d_.config_.smtp_port);
    if (auto out = co_await std::move(first)) co_return *out;
  }
  if (d_.fallback_) {  // FallbackMXhost: after every MX failed
    const Relay& fb = *d_.fallback_;
    auto resolve = AsyncResolve(p_.resolver, !fb.literal, fb.host, use_awaitable);
    MxAnswer hosts = co_await std::move(resolve);
    if (hosts.kind == MxAnswer::Kind::kOk) {
      auto second = TryHosts(hosts, fb.port);
      if (auto out = co_await std::move(second)) co_return *out;
    }
  }
  co_return All(v1::OUTCOME_DEFERRED, "4.4.1", last_error_);
}

// A mailertable error: entry, and sendmail's per-mailer M=.
std::optional<Outcomes> DomainDelivery::Run::Prechecks() const {
  if (!route_.error.empty()) return All(v1::OUTCOME_BOUNCED, EnhancedCode(route_.error.substr(4)), route_.error);
  const uint64_t max = route_.mailer->max_message_size;
  if (max > 0 && m_.body().size() > max) {
    return All(v1::OUTCOME_BOUNCED, "5.3.4",
               "552 5.3.4 Message is too large for mailer " + route_.mailer->name + " (" +
                   std::to_string(m_.body().size()) + " > " + std::to_string(max) + " bytes)");
  }
  return std::nullopt;
}

// The answer's verdict; then the secondary-MX role (sendmail: MX hosts in
// $=w): we and every host no better than us are dropped; if we are the best,
// the mail would loop.
std::optional<Outcomes> DomainDelivery::Run::Resolved(MxAnswer* ans) const {
  switch (ans->kind) {
    case MxAnswer::Kind::kNoSuchDomain: return All(v1::OUTCOME_BOUNCED, "5.1.2", "550 5.1.2 " + ans->error);
    case MxAnswer::Kind::kNullMx: return All(v1::OUTCOME_BOUNCED, "5.1.10", "556 5.1.10 " + ans->error);
    case MxAnswer::Kind::kTempFail: return All(v1::OUTCOME_DEFERRED, "4.4.3", ans->error);
    case MxAnswer::Kind::kOk: break;
  }
  if (route_.relay) return std::nullopt;
  int self_pref = -1;
  for (const auto& h : ans->hosts) {
    std::string name = ToLower(h.name);
    if (!name.empty() && name.back() == '.') name.pop_back();
    if (d_.self_names_.count(name) && (self_pref < 0 || h.preference < self_pref)) self_pref = h.preference;
  }
  if (self_pref < 0) return std::nullopt;
  std::erase_if(ans->hosts, [&](const MxHost& h) { return h.preference >= self_pref; });
  if (!ans->hosts.empty()) return std::nullopt;
  return All(v1::OUTCOME_BOUNCED, "5.4.6",
             "554 5.4.6 mail for " + domain_ + " loops back to myself (this cluster is its best MX)");
}

// The site: its limits, shared by every domain with the same MX hosts.
// Reputation backoff: a suspended site waits (its recipients come back when
// it ends, spread over a while); a slowed one gets tighter limits.
std::optional<Outcomes> DomainDelivery::Run::Site(const MxAnswer& ans) {
  std::vector<std::string> mx_names;
  for (const auto& h : ans.hosts) mx_names.push_back(h.name);
  shape_ = p_.routing.shaping().For(domain_, mx_names);
  if (shape_.named) out_->site = shape_.site;
  auto st = p_.cluster.Site(shape_.site);
  if (!st) return std::nullopt;
  if (st->suspended()) return Suspended(*st);
  if (st->max_connections() > 0 && (shape_.max_connections == 0 || st->max_connections() < shape_.max_connections)) {
    shape_.max_connections = st->max_connections();
  }
  if (st->message_rate_count() > 0)
    shape_.message_rate = RateLimit{st->message_rate_count(), st->message_rate_period_s()};
  return std::nullopt;
}

Outcomes DomainDelivery::Run::Suspended(const v1::SiteStatus& st) const {
  // Spread over a tenth of the suspension, at most a minute.
  const int64_t span = std::clamp<int64_t>((st.until_unix_us() - st.since_unix_us()) / 10, 1, 60'000'000);
  const int64_t spread = static_cast<int64_t>(std::hash<std::string>{}(qid()) % span);
  const int64_t left = std::max<int64_t>(0, st.until_unix_us() - p_.clock.NowUnixMicros());
  auto out = Throttled("4.4.5 site " + st.site() + " is suspended for " + log::FormatDelay(left) + " (" + st.by() +
                       "): " + st.reason());
  for (auto& o : out) o.not_before = st.until_unix_us() + spread;
  Probe::Get().SuspendedPutBack(out.size());
  return out;
}

void DomainDelivery::Run::PickTls() {
  const TlsProfiles& t = d_.profiles_;
  const bool encrypt = shape_.tls == SiteTls::kRequired ||
                       (shape_.tls == SiteTls::kDefault && d_.encrypt_domains_.count(ToLower(domain_)) > 0);
  base_ = encrypt ? t.encrypt : shape_.tls == SiteTls::kNone ? t.plain : shape_.tls == SiteTls::kMay ? t.may : t.base;
  base_.lmtp = route_.mailer->lmtp;
}

// MTA-STS: an enforce policy keeps only the MX hosts it lists and requires
// verified TLS with them; testing only logs.
awaitable<std::optional<Outcomes>> DomainDelivery::Run::ApplyMtaSts(MxAnswer* ans) {
  if (!p_.sts || route_.relay) co_return std::nullopt;
  auto lookup = p_.sts->Lookup(domain_);
  MtaSts::Answer sts = co_await std::move(lookup);
  const auto mode = sts.policy ? sts.policy->mode : StsPolicy::Mode::kNone;
  Probe::Get().MtaSts(StsModeName(mode));
  if (mode == StsPolicy::Mode::kNone) co_return std::nullopt;
  const StsPolicy& policy = *sts.policy;
  std::string unlisted;
  for (const auto& h : ans->hosts) {
    if (!policy.Matches(h.name)) unlisted += (unlisted.empty() ? "" : ", ") + h.name;
  }
  if (mode == StsPolicy::Mode::kTesting) {
    if (!unlisted.empty()) {
      log::Mail(qid(), "MTA-STS testing policy of " + domain_ + " (id " + policy.id + ") does not list " + unlisted +
                           "; delivering anyway");
    }
    co_return std::nullopt;
  }
  std::erase_if(ans->hosts, [&](const MxHost& h) { return !policy.Matches(h.name); });
  if (ans->hosts.empty()) {
    co_return All(v1::OUTCOME_DEFERRED, "4.7.5",
                  "4.7.5 MTA-STS policy of " + domain_ + " (enforce, id " + policy.id +
                      ") lists none of its MX hosts (" + unlisted + "; policy mx: " + policy.MxList() + ")");
  }
  SmtpClientConfig verified = d_.profiles_.verified;
  verified.lmtp = base_.lmtp;
  verified.helo_name = base_.helo_name;
  base_ = std::move(verified);
  co_return std::nullopt;
}

// Egress: the message's pool picks a source; limits hold per site and source.
void DomainDelivery::Run::PickSource() {
  const EgressPick* src = p_.egress.Pick(m_.envelope().sender());
  if (!src) return;
  base_.source_address = src->address;
  if (!src->ehlo.empty()) base_.helo_name = src->ehlo;
  shape_.key += "@" + src->name;
  shape_.source = src->name;
  shape_.source_rate = src->rate;
  out_->source = src->name;
}

awaitable<std::optional<Outcomes>> DomainDelivery::Run::TryHosts(const MxAnswer& hosts, uint16_t port) {
  const int64_t hoststatus_us =
      std::chrono::duration_cast<std::chrono::microseconds>(d_.config_.host_status_timeout).count();
  for (const auto& host : hosts.hosts) {
    const std::string key = ToLower(host.name);
    // PersistentHostStatus: a host that failed recently is not tried again.
    if (auto reason = p_.cluster.hosts().SkipReason(key, p_.clock.NowUnixMicros(), hoststatus_us)) {
      last_error_ = *reason;
      Probe::Get().HostSkipped();
      log::Mail(qid(), "relay=" + host.name + ": skipped, host status: " + *reason);
      continue;
    }
    auto config = HostConfig(host, hosts.secure, port);
    std::optional<SmtpClientConfig> host_cc = co_await std::move(config);
    if (!host_cc) continue;
    bool host_failed = false;
    for (const auto& ip : host.addrs) {
      auto attempt = TryAddress(host, ip, port, *host_cc);
      Attempt at = co_await std::move(attempt);
      if (!at.throttled) {
        if (auto suspended = ReplyRules(at)) co_return suspended;
      }
      if (at.throttled) {  // a limit, not the host: the whole destination waits its turn
        log::Mail(qid(), "relay=" + host.name + ": " + at.error);
        co_return Throttled(at.error);
      }
      // sendmail style: "mx.example.com. [192.0.2.1]", or "[192.0.2.1] [192.0.2.1]" for a literal.
      std::string relay;
      if (host.name == ip) {
        relay.append("[").append(ip).append("]");
      } else {
        relay.append(host.name).append(".");
      }
      relay.append(" [").append(ip).append("]");
      if (at.try_next) {
        last_error_ = at.error + " with " + relay;
        log::Mail(qid(), "relay=" + relay + ": " + at.error + ", trying next host");
        // A certificate that fails a domain's policy is not the host being
        // down: other domains may still use it.
        if (!((host_cc->verify || !host_cc->tlsa.empty()) && at.tls_failed)) host_failed = true;
        continue;
      }
      const int64_t now = p_.clock.NowUnixMicros();
      if (p_.cluster.hosts().ShouldReport(key, true, now)) {
        out_->hosts.push_back(HostOutcomeOf(key, true, at.rcpts.empty() ? "" : at.rcpts.front().reply));
        p_.cluster.hosts().Record(key, true, "250 ok", now);
      }
      Outcomes out;
      for (auto& r : at.rcpts) out.push_back(Outcome{std::move(r), relay, at.dsn_forwarded, at.tls, false});
      co_return out;
    }
    if (host_failed) {  // every address of this host failed
      p_.cluster.hosts().Record(key, false, last_error_, p_.clock.NowUnixMicros());
      out_->hosts.push_back(HostOutcomeOf(key, false, last_error_));
    }
  }
  co_return std::nullopt;
}

// DANE (RFC 7672): a host of a DNSSEC-secure MX answer with secure TLSA
// records gets TLS checked against them, or no mail.
awaitable<std::optional<SmtpClientConfig>> DomainDelivery::Run::HostConfig(const MxHost& host, bool secure,
                                                                           uint16_t port) {
  const TlsProfiles& t = d_.profiles_;
  if (!t.dane_enabled || !secure || route_.relay) co_return base_;
  auto lookup = AsyncTlsa(p_.resolver, host.name, port, use_awaitable);
  TlsaAnswer tlsa = co_await std::move(lookup);
  if (tlsa.kind == TlsaAnswer::Kind::kTempFail) {
    // A secure MX whose TLSA cannot be had: not sent without it.
    last_error_ = "4.7.5 DANE: TLSA lookup failed (" + tlsa.error + ")";
    log::Mail(qid(), "relay=" + host.name + ": " + last_error_ + ", trying next host");
    Probe::Get().Dane("lookup_failed");
    co_return std::nullopt;
  }
  if (tlsa.kind != TlsaAnswer::Kind::kOk || !tlsa.secure) {
    Probe::Get().Dane("insecure");
    co_return base_;
  }
  std::vector<Tlsa> usable;  // DANE-TA(2) and DANE-EE(3) only (RFC 7672 3.1.3)
  for (auto& r : tlsa.records) {
    if ((r.usage == 2 || r.usage == 3) && r.selector <= 1 && r.mtype <= 2) usable.push_back(std::move(r));
  }
  SmtpClientConfig cc = Like(usable.empty() ? t.encrypt : t.dane, base_);  // none usable: TLS, unchecked
  cc.tlsa = std::move(usable);
  Probe::Get().Dane(cc.tlsa.empty() ? "unusable" : "secure");
  co_return cc;
}

// One address; opportunistic TLS that failed there lately goes straight to
// plaintext, and one that fails now is retried in the clear and remembered.
awaitable<Attempt> DomainDelivery::Run::TryAddress(const MxHost& host, const std::string& ip, uint16_t port,
                                                   const SmtpClientConfig& host_cc) {
  const SmtpClientConfig clear_cc = Like(d_.profiles_.plain, base_);
  const bool opportunistic = host_cc.tls == SmtpClientConfig::Tls::kMay;
  const bool remembered = opportunistic && p_.tls_memory.Broken(ip);
  if (remembered) Probe::Get().TlsFailureRemembered();
  const Hop hop{&shape_, route_.mailer->name, host.name, ip, port};
  auto attempt = p_.pool.Transact(hop, remembered ? clear_cc : host_cc, m_, rcpts_);
  Attempt at = co_await std::move(attempt);
  if (at.tls_failed && opportunistic) {
    log::Mail(qid(), "relay=" + host.name + " [" + ip + "]: " + at.error + ", retrying without TLS");
    p_.tls_memory.Remember(ip);
    auto clear = p_.pool.Transact(hop, clear_cc, m_, rcpts_);
    at = co_await std::move(clear);
  }
  co_return at;
}

// Reputation backoff: the replies of this attempt against the site's rules.
std::optional<Outcomes> DomainDelivery::Run::ReplyRules(const Attempt& at) {
  const ReplyRule* fired = nullptr;
  std::string matched;
  if (at.try_next || at.rcpts.empty()) {
    if ((fired = shape_.MatchReply(at.error))) matched = at.error;
  }
  for (const auto& r : at.rcpts) {
    if (fired) break;
    if (!r.reply.empty() && r.reply[0] != '2' && (fired = shape_.MatchReply(r.reply))) matched = r.reply;
  }
  if (!fired) return std::nullopt;
  p_.cluster.TriggerSite(shape_, *fired, matched, qid());
  if (fired->suspend && at.try_next) {  // no other host of the site either
    if (auto st = p_.cluster.Site(shape_.site)) return Suspended(*st);
  }
  if (!fired->suspend) {  // tighter limits from the next connection on
    if (fired->max_connections > 0 &&
        (shape_.max_connections == 0 || fired->max_connections < shape_.max_connections)) {
      shape_.max_connections = fired->max_connections;
    }
    if (!fired->message_rate.none()) shape_.message_rate = fired->message_rate;
  }
  return std::nullopt;
}

}  // namespace mx::delivery
