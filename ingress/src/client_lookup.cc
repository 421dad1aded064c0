// client_lookup.cc — reverse DNS (forward-confirmed) and DNSBL queries.
#include "mx/ingress/client_lookup.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>

#include <algorithm>
#include <atomic>

#include "mx/common/address.h"

namespace mx::ingress {
namespace {

constexpr int64_t kMinTtlUs = 60'000'000;
constexpr int64_t kMaxTtlUs = 3'600'000'000;
constexpr int64_t kNegativeTtlUs = 300'000'000;
constexpr size_t kMaxCacheEntries = 200'000;

}  // namespace

const char* DnsblResultName(DnsblAnswer::Kind kind) {
  switch (kind) {
    case DnsblAnswer::Kind::kListed: return "listed";
    case DnsblAnswer::Kind::kTempFail: return "tempfail";
    case DnsblAnswer::Kind::kNotListed: break;
  }
  return "clean";
}

// One Lookup() in flight: counts answers outstanding; finishes on the last.
// Answers come from the DNS thread, or from the caller's thread when cached;
// each writes its own field of facts, and the release/acquire on pending
// makes them all visible to whoever finishes.
struct ClientLookup::Job {
  std::string ip;
  ClientFacts facts;
  std::atomic<size_t> pending{0};
  std::function<void(ClientFacts)> done;
  void Answered() {
    if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) done(std::move(facts));
  }
};

ClientLookup::ClientLookup(std::unique_ptr<DnsChannel> dns, const Clock& clock) : dns_(std::move(dns)), clock_(clock) {}

ClientLookup::~ClientLookup() {
  dns_.reset();  // stops the thread before the cache goes away
}

bool ClientLookup::FromCache(const std::string& key, Cached* out) {
  std::lock_guard lock(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return false;
  if (it->second.expires_us <= clock_.NowUnixMicros()) {
    cache_.erase(it);
    return false;
  }
  *out = it->second;
  return true;
}

void ClientLookup::Store(const std::string& key, Cached value) {
  std::lock_guard lock(mu_);
  if (cache_.size() >= kMaxCacheEntries) {  // bounded: drop what expired, else start over
    const int64_t now = clock_.NowUnixMicros();
    std::erase_if(cache_, [&](const auto& kv) { return kv.second.expires_us <= now; });
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  }
  cache_[key] = std::move(value);
}

// One cached query: A records (as text) or PTR names.
void ClientLookup::Resolve(const std::string& name, int type, Answer answer) {
  const std::string key = std::to_string(type) + ":" + ToLower(name);
  Cached cached;
  if (FromCache(key, &cached)) return answer(true, cached, "");  // on the caller's thread: no hop
  dns_->Query(name, type,
              [this, key, type, answer = std::move(answer)](int status, const unsigned char* abuf, int alen) {
                Cached c;
                if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
                  c.expires_us = clock_.NowUnixMicros() + kNegativeTtlUs;
                  Store(key, c);
                  return answer(true, c, "");
                }
                if (status != ARES_SUCCESS) return answer(false, c, ares_strerror(status));
                int64_t ttl_us = kMaxTtlUs;
                if (type == ns_t_a) {
                  ares_addrttl ttls[32];
                  int n = 32;
                  if (ares_parse_a_reply(abuf, alen, nullptr, ttls, &n) != ARES_SUCCESS) {
                    return answer(false, c, "malformed A answer");
                  }
                  for (int i = 0; i < n; ++i) {
                    char buf[INET_ADDRSTRLEN];
                    if (inet_ntop(AF_INET, &ttls[i].ipaddr, buf, sizeof buf)) c.values.push_back(buf);
                    ttl_us = std::min<int64_t>(ttl_us, int64_t{ttls[i].ttl} * 1'000'000);
                  }
                } else {
                  hostent* he = nullptr;
                  if (ares_parse_ptr_reply(abuf, alen, nullptr, 0, AF_INET, &he) != ARES_SUCCESS || !he) {
                    return answer(false, c, "malformed PTR answer");
                  }
                  if (he->h_name) c.values.push_back(he->h_name);
                  for (char** a = he->h_aliases; a && *a; ++a) c.values.push_back(*a);
                  ares_free_hostent(he);
                  ttl_us = kMinTtlUs * 10;  // c-ares does not expose PTR TTLs
                }
                c.exists = !c.values.empty();
                c.expires_us = clock_.NowUnixMicros() + std::clamp(ttl_us, kMinTtlUs, kMaxTtlUs);
                Store(key, c);
                answer(true, c, "");
              });
}

void ClientLookup::Lookup(const std::string& ip, bool reverse, const std::vector<std::string>& zones,
                          std::function<void(ClientFacts)> done) {
  auto job = std::make_shared<Job>();
  job->ip = ip;
  job->done = std::move(done);
  const std::string rev = ReverseName(ip);
  job->pending = 1;  // released at the end, so an all-cached lookup finishes once
  if (!rev.empty()) {
    // Every slot exists before the first query: answers write their own slot
    // while later queries are still being issued (no reallocation under them).
    for (const auto& zone : zones) job->facts.dnsbl.push_back(DnsblAnswer{zone, DnsblAnswer::Kind::kNotListed, {}, ""});
    for (size_t i = 0; i < zones.size(); ++i) {
      ++job->pending;
      Resolve(rev + "." + zones[i], ns_t_a, [job, i](bool ok, const Cached& c, const std::string& error) {
        auto& a = job->facts.dnsbl[i];
        if (!ok) {
          a.kind = DnsblAnswer::Kind::kTempFail;
          a.error = error;
        } else if (c.exists) {
          a.kind = DnsblAnswer::Kind::kListed;
          a.addrs = c.values;
        }
        job->Answered();
      });
    }
    if (reverse && ip.find(':') == std::string::npos) {
      ++job->pending;
      Resolve(rev + ".in-addr.arpa", ns_t_ptr, [this, job](bool ok, const Cached& ptr, const std::string&) {
        if (!ok || ptr.values.empty()) return job->Answered();
        // Forward-confirm: the name must resolve back to the client's address.
        std::string name = ptr.values.front();
        Resolve(name, ns_t_a, [job, name](bool ok2, const Cached& a, const std::string&) {
          if (ok2 && std::find(a.values.begin(), a.values.end(), job->ip) != a.values.end()) job->facts.name = name;
          job->Answered();
        });
      });
    }
  }
  job->Answered();  // everything cached: done runs here, on the caller's thread
}

}  // namespace mx::ingress
