// ares_resolver.cc — MX resolution over the shared c-ares channel (mx/common/dns.h).
#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>

#include <algorithm>
#include <map>
#include <optional>
#include <random>

#include "mx/common/dns.h"
#include "mx/common/log.h"
#include "mx/delivery/resolver.h"
#include "probe.h"

namespace mx::delivery {
namespace {

bool IsTemporary(int status) {
  return status != ARES_ENOTFOUND && status != ARES_ENODATA;
}

class AresResolver final : public Resolver {
 public:
  AresResolver(std::unique_ptr<DnsChannel> dns, ResolverOptions options) : dns_(std::move(dns)), options_(options) {}

  void ResolveMx(const std::string& domain, std::function<void(MxAnswer)> done) override {
    dns_->Post([this, domain, done = std::move(done)]() mutable { StartMx(domain, std::move(done)); });
  }

  void ResolveHost(const std::string& host, std::function<void(MxAnswer)> done) override {
    // An IP literal (a smart host like [192.0.2.1]) is answered here, without
    // a round trip through the resolver thread.
    if (auto literal = LiteralAnswer(host)) return done(std::move(*literal));
    dns_->Post([this, host, done = std::move(done)]() mutable {
      auto req = std::make_shared<Request>();
      req->done = std::move(done);
      req->answer.kind = MxAnswer::Kind::kOk;
      req->answer.hosts.push_back(MxHost{host, 0, {}});
      LookupAddrs(req);
    });
  }

  void ResolveTlsa(const std::string& host, uint16_t port, std::function<void(TlsaAnswer)> done) override {
    const std::string name = "_" + std::to_string(port) + "._tcp." + host;
    dns_->QueryAd(name, 52 /* TLSA */, [name, done = std::move(done)](int status, const unsigned char* abuf, int alen) {
      Probe::Get().DnsQuery("TLSA", status == ARES_SUCCESS ? "ok" : ares_strerror(status));
      TlsaAnswer a;
      a.secure = AnswerIsSecure(abuf, alen);
      if (status == ARES_SUCCESS) {
        a.kind = TlsaAnswer::Kind::kOk;
        a.records = ParseTlsaAnswer(abuf, alen);
        if (a.records.empty()) a.kind = TlsaAnswer::Kind::kNone;
      } else if (!IsTemporary(status)) {
        a.kind = TlsaAnswer::Kind::kNone;
      } else {
        a.error = "Name server: " + name + " (TLSA): " + ares_strerror(status);
      }
      done(std::move(a));
    });
  }

  void ResolveTxt(const std::string& name, std::function<void(TxtAnswer)> done) override {
    dns_->Post([this, name, done = std::move(done)]() mutable {
      dns_->Query(name, ns_t_txt, [name, done = std::move(done)](int status, const unsigned char* abuf, int alen) {
        Probe::Get().DnsQuery("TXT", status == ARES_SUCCESS ? "ok" : ares_strerror(status));
        TxtAnswer a;
        if (status == ARES_SUCCESS) {
          ares_txt_ext* txt = nullptr;
          int rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
          if (rc == ARES_SUCCESS) {
            a.kind = TxtAnswer::Kind::kOk;
            for (auto* t = txt; t; t = t->next) {
              std::string piece(reinterpret_cast<const char*>(t->txt), t->length);
              if (t->record_start || a.records.empty()) {
                a.records.push_back(std::move(piece));
              } else {
                a.records.back() += piece;  // the next string of the same record
              }
            }
            ares_free_data(txt);
          } else if (rc == ARES_ENODATA) {
            a.kind = TxtAnswer::Kind::kNone;
          } else {
            a.error = "malformed TXT answer for " + name + ": " + ares_strerror(rc);
          }
        } else if (!IsTemporary(status)) {
          a.kind = TxtAnswer::Kind::kNone;
        } else {
          a.error = "Name server: " + name + " (TXT): " + ares_strerror(status);
        }
        done(std::move(a));
      });
    });
  }

 private:
  enum class Literal { kNone, kV4, kV6 };
  static Literal LiteralOf(const std::string& host) {
    in_addr a4{};
    in6_addr a6{};
    if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return Literal::kV4;
    if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) return Literal::kV6;
    return Literal::kNone;
  }
  // An address of a family delivery uses (delivery.inet_protocols).
  bool Usable(Literal l) const { return (l == Literal::kV4 && options_.ipv4) || (l == Literal::kV6 && options_.ipv6); }

  // The answer for an IP literal host (nothing when host is a name, or an
  // address of a family delivery does not use: that case keeps its error path).
  std::optional<MxAnswer> LiteralAnswer(const std::string& host) const {
    if (!Usable(LiteralOf(host))) return std::nullopt;
    MxAnswer a;
    a.kind = MxAnswer::Kind::kOk;
    a.hosts.push_back(MxHost{host, 0, {host}});
    return a;
  }

  // One ResolveMx/ResolveHost in progress (only touched on the resolver thread).
  struct Request {
    std::string domain;
    MxAnswer answer;
    size_t pending = 0;
    std::function<void(MxAnswer)> done;
    std::string temp_error, perm_error;        // from address lookups
    std::vector<std::vector<std::string>> v6;  // per host: AAAA answers (tried first)
    std::vector<bool> unusable;                // per host: an AAAA lookup failed (no workaround)
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  };
  void StartMx(const std::string& domain, std::function<void(MxAnswer)> done) {
    auto req = std::make_shared<Request>();
    req->domain = domain;
    req->done = std::move(done);
    auto on_mx = [this, req](int status, const unsigned char* abuf, int alen) {
      Probe::Get().DnsQuery("MX", status == ARES_SUCCESS ? "ok" : ares_strerror(status));
      req->answer.secure = status == ARES_SUCCESS && AnswerIsSecure(abuf, alen);
      OnMx(req, status, abuf, alen);
    };
    if (options_.dnssec) {
      dns_->QueryAd(domain, ns_t_mx, std::move(on_mx));
    } else {
      dns_->Query(domain, ns_t_mx, std::move(on_mx));
    }
  }

  // Queries A and/or AAAA (delivery.inet_protocols) for every host of req;
  // finishes when all answered.
  void LookupAddrs(const std::shared_ptr<Request>& req) {
    const size_t n = req->answer.hosts.size();
    req->v6.assign(n, {});
    req->unusable.assign(n, false);
    const size_t per_host = (options_.ipv4 ? 1 : 0) + (options_.ipv6 ? 1 : 0);
    req->pending = n * per_host;
    if (req->pending == 0) return Finish(req);
    for (size_t i = 0; i < n; ++i) {
      const auto& name = req->answer.hosts[i].name;
      if (const Literal literal = LiteralOf(name); literal != Literal::kNone) {  // an IP literal needs no lookup
        if (Usable(literal)) req->answer.hosts[i].addrs.push_back(name);
        req->pending -= per_host;
        if (req->pending == 0) Finish(req);
        continue;
      }
      if (options_.ipv6) {
        dns_->Query(name, ns_t_aaaa, [this, req, i](int status, const unsigned char* abuf, int alen) {
          Probe::Get().DnsQuery("AAAA", status == ARES_SUCCESS ? "ok" : ares_strerror(status));
          OnAddr(req, i, true, status, abuf, alen);
        });
      }
      if (options_.ipv4) {
        dns_->Query(name, ns_t_a, [this, req, i](int status, const unsigned char* abuf, int alen) {
          Probe::Get().DnsQuery("A", status == ARES_SUCCESS ? "ok" : ares_strerror(status));
          OnAddr(req, i, false, status, abuf, alen);
        });
      }
    }
  }

  void OnMx(const std::shared_ptr<Request>& req, int status, const unsigned char* abuf, int alen) {
    auto& ans = req->answer;
    if (status == ARES_SUCCESS) {
      ares_mx_reply* mx = nullptr;
      int rc = ares_parse_mx_reply(abuf, alen, &mx);
      if (rc == ARES_SUCCESS) {
        for (auto* m = mx; m; m = m->next) ans.hosts.push_back(MxHost{m->host, m->priority, {}});
        ares_free_data(mx);
      } else if (rc != ARES_ENODATA) {
        ans.kind = MxAnswer::Kind::kTempFail;
        ans.error = std::string("malformed MX answer for ") + req->domain + ": " + ares_strerror(rc);
        return Finish(req);
      }
    } else if (status == ARES_ENOTFOUND) {
      ans.kind = MxAnswer::Kind::kNoSuchDomain;
      ans.error = "Host unknown (Name server: " + req->domain + ": host not found)";
      return Finish(req);
    } else if (status != ARES_ENODATA) {
      ans.kind = MxAnswer::Kind::kTempFail;
      ans.error = "Name server: " + req->domain + ": " + ares_strerror(status);
      return Finish(req);
    }
    // RFC 7505 null MX: a single MX with an empty (root) exchange.
    if (ans.hosts.size() == 1 && (ans.hosts[0].name.empty() || ans.hosts[0].name == ".")) {
      ans.kind = MxAnswer::Kind::kNullMx;
      ans.error = "Domain " + req->domain + " does not accept mail (null MX)";
      ans.hosts.clear();
      return Finish(req);
    }
    if (ans.hosts.empty()) {  // no MX: the domain itself (RFC 5321 5.1 implicit MX)
      ans.implicit = true;
      ans.hosts.push_back(MxHost{req->domain, 0, {}});
    }
    // Preference order; equal preferences in random order to spread load.
    thread_local std::mt19937 rng{std::random_device{}()};
    std::shuffle(ans.hosts.begin(), ans.hosts.end(), rng);
    std::stable_sort(ans.hosts.begin(), ans.hosts.end(),
                     [](const MxHost& a, const MxHost& b) { return a.preference < b.preference; });
    ans.kind = MxAnswer::Kind::kOk;
    LookupAddrs(req);
  }

  void OnAddr(const std::shared_ptr<Request>& req, size_t index, bool v6, int status, const unsigned char* abuf,
              int alen) {
    auto& host = req->answer.hosts[index];
    if (status == ARES_SUCCESS) {
      if (v6) {
        ares_addr6ttl ttls[32];
        int n = 32;
        hostent* he = nullptr;
        if (ares_parse_aaaa_reply(abuf, alen, &he, ttls, &n) == ARES_SUCCESS) {
          for (int i = 0; i < n; ++i) {
            char buf[INET6_ADDRSTRLEN];
            if (inet_ntop(AF_INET6, &ttls[i].ip6addr, buf, sizeof buf)) req->v6[index].push_back(buf);
          }
        }
        if (he) ares_free_hostent(he);
      } else {
        ares_addrttl ttls[32];
        int n = 32;
        hostent* he = nullptr;
        if (ares_parse_a_reply(abuf, alen, &he, ttls, &n) == ARES_SUCCESS) {
          for (int i = 0; i < n; ++i) {
            char buf[INET_ADDRSTRLEN];
            if (inet_ntop(AF_INET, &ttls[i].ipaddr, buf, sizeof buf)) host.addrs.push_back(buf);
          }
        }
        if (he) ares_free_hostent(he);
      }
    } else if (IsTemporary(status)) {
      if (v6 && options_.work_around_broken_aaaa) {
        // WorkAroundBrokenAAAA: a server that fails AAAA queries does not
        // hold the IPv4 addresses hostage.
        Probe::Get().AaaaWorkaround();
        log::Info("AAAA lookup for " + host.name + " failed (" + ares_strerror(status) +
                  "); using its IPv4 addresses (work_around_broken_aaaa)");
      } else {
        req->temp_error = "Name server: " + host.name + (v6 ? " (AAAA)" : "") + ": " + ares_strerror(status);
        if (v6) req->unusable[index] = true;  // as sendmail: the lookup as a whole failed
      }
    } else if (!v6) {
      req->perm_error = "Host unknown (Name server: " + host.name + ": host not found)";
    }
    if (--req->pending == 0) Finish(req);
  }

  void Finish(const std::shared_ptr<Request>& req) {
    auto& ans = req->answer;
    if (ans.kind == MxAnswer::Kind::kOk) {
      for (size_t i = 0; i < req->v6.size() && i < ans.hosts.size(); ++i) {
        auto& addrs = ans.hosts[i].addrs;
        if (req->unusable[i]) {
          addrs.clear();
        } else {  // IPv6 first (RFC 6724's default preference)
          addrs.insert(addrs.begin(), req->v6[i].begin(), req->v6[i].end());
        }
      }
      std::erase_if(ans.hosts, [](const MxHost& h) { return h.addrs.empty(); });
      if (ans.hosts.empty()) {
        // No usable address: permanent only if every lookup said the name does not exist.
        if (!req->temp_error.empty()) {
          ans.kind = MxAnswer::Kind::kTempFail;
          ans.error = req->temp_error;
        } else {
          ans.kind = MxAnswer::Kind::kNoSuchDomain;
          ans.error = req->perm_error.empty() ? "No MX or A records for " + req->domain : req->perm_error;
        }
      }
    }
    Probe::Get().DnsLatency(std::chrono::duration<double>(std::chrono::steady_clock::now() - req->start).count());
    req->done(std::move(ans));
  }

  std::unique_ptr<DnsChannel> dns_;
  const ResolverOptions options_;
};

}  // namespace

std::vector<Tlsa> ParseTlsaAnswer(const unsigned char* a, int length) {
  std::vector<Tlsa> out;
  const size_t n = length > 0 ? static_cast<size_t>(length) : 0;
  if (!a || n < 12) return out;
  // Skips a (possibly compressed) name; false when it runs off the end.
  auto skip_name = [&](size_t* p) {
    while (*p < n) {
      const unsigned char len = a[*p];
      if (len == 0) {
        ++*p;
        return true;
      }
      if ((len & 0xC0) == 0xC0) {
        *p += 2;
        return *p <= n;
      }
      *p += 1 + len;
    }
    return false;
  };
  const int qd = (a[4] << 8) | a[5], an = (a[6] << 8) | a[7];
  size_t p = 12;
  for (int i = 0; i < qd; ++i) {
    if (!skip_name(&p) || p + 4 > n) return out;
    p += 4;
  }
  for (int i = 0; i < an; ++i) {
    if (!skip_name(&p) || p + 10 > n) return out;
    const int type = (a[p] << 8) | a[p + 1];
    const size_t rdlen = (a[p + 8] << 8) | a[p + 9];
    p += 10;
    if (p + rdlen > n) return out;
    if (type == 52 && rdlen >= 3) {
      Tlsa t;
      t.usage = a[p];
      t.selector = a[p + 1];
      t.mtype = a[p + 2];
      t.data.assign(reinterpret_cast<const char*>(a + p + 3), rdlen - 3);
      out.push_back(std::move(t));
    }
    p += rdlen;
  }
  return out;
}

Result<std::unique_ptr<Resolver>> MakeAresResolver(const std::vector<std::string>& servers,
                                                   std::chrono::milliseconds timeout, ResolverOptions options) {
  auto dns = DnsChannel::Start(servers, timeout);
  if (!dns.ok()) return Status(dns.status().code(), "delivery.dns_servers: " + dns.status().message());
  return std::unique_ptr<Resolver>(std::make_unique<AresResolver>(std::move(dns).value(), options));
}

}  // namespace mx::delivery
