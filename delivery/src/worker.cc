// worker.cc — Pull → resolve → SMTP → Ack loop of the delivery role.
#include "mx/delivery/worker.h"

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "mx/common/address.h"
#include "mx/common/async_call.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/common/qid.h"
#include "mx/common/thread_name.h"
#include "mx/delivery/bounce_class.h"
#include "mx/delivery/dsn.h"
#include "mx/delivery/host_cache.h"
#include "mx/delivery/mta_sts.h"
#include "mx/delivery/probe.h"
#include "mx/delivery/routing.h"
#include "mx/delivery/smtp_client.h"
#include "mx/queue/client.h"
#include "mx/queue/permits.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::delivery {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

// Permit holds are renewed this often (a third of their TTL).
constexpr auto kPermitRenewEvery = std::chrono::microseconds(queue::kPermitTtlUs / 3);
// Ack coalescing: at most this many Ack RPCs per shard are outstanding; acks
// finished meanwhile wait and leave together as one request (one RPC, one
// Raft command), up to these limits.
constexpr int kAcksInFlightPerShard = 2;
constexpr size_t kMaxAcksPerRequest = 256;
constexpr size_t kMaxAckRequestBytes = 8u << 20;

template <typename Token>
auto AsyncResolve(Resolver& resolver, bool mx, std::string name, Token&& token) {
  return asio::async_initiate<Token, void(MxAnswer)>(
      [&resolver, mx](auto handler, std::string n) {
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
      [&resolver, port](auto handler, std::string h) {
        auto ex = asio::get_associated_executor(handler);
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        resolver.ResolveTlsa(h, port, [shared, ex](TlsaAnswer a) {
          asio::post(ex, [shared, a = std::move(a)]() mutable { (*shared)(std::move(a)); });
        });
      },
      token, std::move(host));
}

struct PermitAnswer {
  bool granted = false;
  std::chrono::milliseconds retry_after{0};
};

// One Permit call to shard 0's leader (callback API); the answer is posted to
// the caller's executor. An unreachable leader is a refusal (fail closed).
template <typename Token>
auto AsyncPermit(queue::QueueRouter& router, std::atomic<int64_t>& in_flight, v1::PermitRequest req, Token&& token) {
  return asio::async_initiate<Token, void(PermitAnswer)>(
      [&router, &in_flight](auto handler, v1::PermitRequest r) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        auto call = AsyncCall<v1::PermitRequest, v1::PermitResponse>::WithDeadline(std::chrono::seconds(2));
        call->req = std::move(r);
        auto target = router.Leader(0);
        in_flight.fetch_add(1);
        target.stub->async()->Permit(&call->ctx, &call->req, &call->resp,
                                     [&router, &in_flight, call, h, ex, address = target.address](grpc::Status st) {
                                       router.Observe(0, address, call->ctx, st);
                                       PermitAnswer a;
                                       a.granted = st.ok() && call->resp.granted();
                                       a.retry_after =
                                           std::chrono::milliseconds(st.ok() ? call->resp.retry_after_ms() : 500);
                                       asio::post(ex, [h, a]() mutable { (*h)(a); });
                                       in_flight.fetch_sub(1);
                                     });
      },
      token, std::move(req));
}

// An open session, the permit hold it occupies (if a limit applies) and
// where it may be reused.
struct Conn {
  std::unique_ptr<SmtpSession> session;
  std::string holder;  // "" when no limit applies
  std::string pool_key;
  std::chrono::steady_clock::time_point idle_since;
};

// ConnectionCacheSize / ConnectionCacheTimeout: idle sessions by
// destination, address, mailer and TLS mode; the oldest go first when full.
// Also the wake-up point for deliveries waiting for a connection slot.
class SessionCache {
 public:
  std::unique_ptr<Conn> Take(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = idle_.find(key);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    auto c = std::move(it->second.back());  // the most recently used: the least likely to have timed out
    it->second.pop_back();
    if (it->second.empty()) idle_.erase(it);
    --count_;
    Probe::Get().CachedConnections(-1);
    return c;
  }
  // Keeps c; returns what must be closed to stay within capacity.
  std::vector<std::unique_ptr<Conn>> Put(std::unique_ptr<Conn> c, size_t capacity) {
    std::vector<std::unique_ptr<Conn>> evicted;
    std::lock_guard lock(mu_);
    c->idle_since = std::chrono::steady_clock::now();
    idle_[c->pool_key].push_back(std::move(c));
    ++count_;
    Probe::Get().CachedConnections(1);
    while (count_ > capacity) evicted.push_back(PopOldest());
    return evicted;
  }
  // Idle longer than timeout.
  std::vector<std::unique_ptr<Conn>> Expired(std::chrono::steady_clock::duration timeout) {
    return IdleSince(std::chrono::steady_clock::now() - timeout);
  }
  // Every idle session (shutdown).
  std::vector<std::unique_ptr<Conn>> TakeAll() { return IdleSince(std::chrono::steady_clock::time_point::max()); }
  // Drops what is left, sessions and waiters' timers, while the io_context
  // they belong to still exists.
  void Clear() {
    auto rest = TakeAll();
    std::lock_guard lock(mu_);
    waiters_.clear();
  }
  bool Peek(const std::string& key) {
    std::lock_guard lock(mu_);
    return idle_.count(key) > 0;
  }
  void AddWaiter(const std::shared_ptr<asio::steady_timer>& t) {
    std::lock_guard lock(mu_);
    waiters_.insert(t);
  }
  void RemoveWaiter(const std::shared_ptr<asio::steady_timer>& t) {
    std::lock_guard lock(mu_);
    waiters_.erase(t);
  }
  // A slot or a session came free: every waiter looks again.
  void WakeWaiters() {
    std::set<std::shared_ptr<asio::steady_timer>> w;
    {
      std::lock_guard lock(mu_);
      w.swap(waiters_);
    }
    for (auto& t : w) asio::post(t->get_executor(), [t] { t->cancel(); });
  }

 private:
  // Idle sessions put back at or before cutoff; mu_ not held.
  std::vector<std::unique_ptr<Conn>> IdleSince(std::chrono::steady_clock::time_point cutoff) {
    std::vector<std::unique_ptr<Conn>> out;
    std::lock_guard lock(mu_);
    for (auto it = idle_.begin(); it != idle_.end();) {
      auto& q = it->second;
      while (!q.empty() && q.front()->idle_since <= cutoff) {
        out.push_back(std::move(q.front()));
        q.pop_front();
        --count_;
        Probe::Get().CachedConnections(-1);
      }
      it = q.empty() ? idle_.erase(it) : std::next(it);
    }
    return out;
  }

  std::unique_ptr<Conn> PopOldest() {  // mu_ held, count_ > 0
    auto oldest = idle_.begin();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->second.front()->idle_since < oldest->second.front()->idle_since) oldest = it;
    }
    auto c = std::move(oldest->second.front());
    oldest->second.pop_front();
    if (oldest->second.empty()) idle_.erase(oldest);
    --count_;
    Probe::Get().CachedConnections(-1);
    return c;
  }

  std::mutex mu_;
  std::map<std::string, std::deque<std::unique_ptr<Conn>>> idle_;
  size_t count_ = 0;
  std::set<std::shared_ptr<asio::steady_timer>> waiters_;
};

// Per-recipient outcome with where it came from.
struct Outcome {
  RcptOutcome r;
  std::string relay;
  bool dsn_forwarded = false;  // the next hop took over the NOTIFY request
  std::string tls;             // protocol and cipher when the session was encrypted
  bool throttled = false;      // put back by a delivery limit, not by the destination
  int64_t not_before = 0;      // throttled because the site is suspended: not before then
};

// An egress source as the worker uses it, and a pool's weighted picks.
struct EgressPick {
  std::string name, address, ehlo;
  RateLimit rate;
};
struct EgressPoolPicks {
  std::string name;
  std::vector<std::pair<size_t, uint32_t>> picks;  // index into the sources, weight
  uint64_t total = 0;
  std::vector<std::string> senders;
};

// The cluster's suspended and slowed sites as this worker knows them: shard
// 0's list (refreshed with the host status) and this worker's own triggers.
class SiteBook {
 public:
  std::optional<v1::SiteStatus> Get(const std::string& site, int64_t now_us) const {
    std::lock_guard lock(mu_);
    auto it = sites_.find(site);
    if (it == sites_.end() || it->second.until_unix_us() <= now_us) return std::nullopt;
    return it->second;
  }
  void Set(const v1::SiteStatus& s, int64_t now_us) {
    std::lock_guard lock(mu_);
    sites_[s.site()] = s;
    set_at_[s.site()] = now_us;
  }
  // Shard 0's view replaces this one, but for what this worker set since the
  // refresh began (its SetSiteStatus may not have committed yet).
  void Merge(const v1::ListSiteStatusResponse& from_shard0, int64_t refresh_started_us, size_t* suspended,
             size_t* slowed) {
    std::lock_guard lock(mu_);
    std::unordered_map<std::string, v1::SiteStatus> next;
    for (const auto& st : from_shard0.sites()) next[st.site()] = st;
    std::erase_if(set_at_, [&](const auto& kv) { return kv.second < refresh_started_us; });
    for (const auto& [site, _] : set_at_) {
      if (auto it = sites_.find(site); it != sites_.end()) next.emplace(site, it->second);
    }
    sites_ = std::move(next);
    *suspended = *slowed = 0;
    for (const auto& [_, st] : sites_) ++(st.suspended() ? *suspended : *slowed);
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, v1::SiteStatus> sites_;
  std::unordered_map<std::string, int64_t> set_at_;
};

// Printable ASCII only (a reply quoted in a site's reason; protobuf strings
// must be UTF-8), at most max octets.
std::string PrintableCut(std::string_view text, size_t max) {
  std::string out;
  for (char c : text.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : ' ';
  return out;
}

class Worker final : public DeliveryWorker {
 public:
  Worker(const Config& config, Routing routing, std::unique_ptr<Resolver> resolver, const Clock& clock)
      : config_(config.delivery),
        routing_(std::move(routing)),
        lease_ttl_(config.queue.lease_ttl),
        router_(config.delivery.queue, config.queue.shards),
        hostname_(config.hostname),
        resolver_(std::move(resolver)),
        clock_(clock),
        qids_(clock, RandomQidTag()),
        work_(asio::make_work_guard(io_)) {
    client_.helo_name = config_.helo_name;
    client_.connect_timeout = config_.connect_timeout;
    client_.greeting_timeout = config_.greeting_timeout;
    client_.command_timeout = config_.command_timeout;
    client_.data_timeout = config_.data_timeout;
    client_.tls = config_.tls_security_level == "none"      ? SmtpClientConfig::Tls::kNone
                  : config_.tls_security_level == "encrypt" ? SmtpClientConfig::Tls::kEncrypt
                                                            : SmtpClientConfig::Tls::kMay;
    client_.tls_context = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    client_.tls_context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                                     asio::ssl::context::no_sslv3);
    client_.tls_context->set_verify_mode(asio::ssl::verify_none);  // opportunistic, like Postfix may/encrypt
    for (const auto& d : config_.tls_encrypt_domains) encrypt_domains_.insert(ToLower(d));
    self_names_.insert(ToLower(config.hostname));
    for (const auto& n : config_.mx_self_names) self_names_.insert(ToLower(n));
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    // node/host/incarnation: the queue voids leases of older incarnations of
    // node/host/ when this one connects (pid alone repeats: PID 1 in containers).
    worker_id_ = config.node_name + "/" + host + "/" + std::to_string(getpid()) + "." +
                 std::to_string(clock.NowUnixMicros() / 1000);
    encrypt_client_ = client_;
    encrypt_client_.tls = SmtpClientConfig::Tls::kEncrypt;
    plain_client_ = client_;
    plain_client_.tls = SmtpClientConfig::Tls::kNone;
    may_client_ = client_;
    may_client_.tls = SmtpClientConfig::Tls::kMay;

    for (const auto& src : config_.sources) {
      auto rate = ParseRate(src.max_message_rate.empty() ? "none" : src.max_message_rate);
      sources_.push_back(EgressPick{src.name, src.address, src.ehlo, rate.ok() ? *rate : RateLimit{0, 60}});
    }
    if (!sources_.empty()) {
      auto index_of = [&](const std::string& n) {
        for (size_t i = 0; i < sources_.size(); ++i) {
          if (sources_[i].name == n) return i;
        }
        return size_t{0};  // validated by ParseConfig
      };
      bool has_default = false;
      for (const auto& p : config_.pools) {
        EgressPoolPicks pp;
        pp.name = p.name;
        for (const auto& d : p.senders) pp.senders.push_back(ToLower(d));
        for (const auto& [n, w] : p.sources) {
          pp.picks.emplace_back(index_of(n), w);
          pp.total += w;
        }
        has_default = has_default || p.name == "default";
        pools_.push_back(std::move(pp));
      }
      if (!has_default) {
        EgressPoolPicks all;
        all.name = "default";
        for (size_t i = 0; i < sources_.size(); ++i) {
          all.picks.emplace_back(i, 1);
          ++all.total;
        }
        pools_.push_back(std::move(all));
      }
      std::stable_partition(pools_.begin(), pools_.end(), [](const auto& p) { return p.name != "default"; });
    }

    if (!config_.fallback_mx_host.empty()) {
      auto hp = ParseHostPort(config_.fallback_mx_host, config_.smtp_port);  // validated by ParseConfig
      fallback_ = Relay{hp.ok() ? hp->host : config_.fallback_mx_host, hp.ok() ? hp->port : config_.smtp_port,
                        config_.fallback_mx_host.front() == '['};
    }
  }

  ~Worker() override { Stop(); }

  // delivery.mta_sts: ctx verifies certificates against the trust anchors.
  void EnableMtaSts(std::shared_ptr<asio::ssl::context> ctx) {
    verified_client_ = encrypt_client_;
    verified_client_.tls_context = ctx;
    verified_client_.verify = true;
    MtaSts::Options o;
    o.https_port = config_.mta_sts_port;
    o.timeout = config_.mta_sts_timeout;
    o.tls = std::move(ctx);
    sts_ = std::make_unique<MtaSts>(*resolver_, clock_, std::move(o));
  }

  // delivery.dane: ctx is DANE-enabled (SSL_CTX_dane_enable).
  void EnableDane(std::shared_ptr<asio::ssl::context> ctx) {
    dane_client_ = encrypt_client_;
    dane_client_.tls_context = std::move(ctx);
    dane_ = true;
  }

  // An opportunistic STARTTLS failed at ip lately: plaintext there for a while.
  bool TlsBroken(const std::string& ip) {
    std::lock_guard lock(tls_mu_);
    auto it = tls_broken_.find(ip);
    if (it == tls_broken_.end()) return false;
    if (clock_.NowUnixMicros() < it->second) return true;
    tls_broken_.erase(it);
    return false;
  }
  void RememberTlsBroken(const std::string& ip) {
    const int64_t ttl = std::chrono::duration_cast<std::chrono::microseconds>(config_.tls_failure_memory).count();
    if (ttl <= 0) return;
    std::lock_guard lock(tls_mu_);
    if (tls_broken_.size() > 100'000) tls_broken_.clear();  // a bound, not a policy
    tls_broken_[ip] = clock_.NowUnixMicros() + ttl;
  }

  void Start() {
    for (unsigned i = 0; i < std::max(1u, config_.threads); ++i) {
      threads_.emplace_back([this, i] {
        SetThreadName("mx-dlv-" + std::to_string(i));
        io_.run();
      });
    }
    // Each shard gets an equal share of the concurrency as Pull credits.
    const uint32_t n = router_.shards();
    for (uint32_t id = 0; id < n; ++id) {
      auto shard = std::make_shared<Shard>();
      shard->id = id;
      shard->budget = std::max<int64_t>(1, config_.concurrency / n);
      shards_.push_back(shard);
      pullers_.emplace_back([this, shard] {
        SetThreadName("mx-pull-" + std::to_string(shard->id));
        PullLoop(shard);
      });
    }
    if (config_.host_status_timeout.count() > 0)
      refresher_ = std::thread([this] {
        SetThreadName("mx-hoststatus");
        RefreshHostStatus();
      });
    renewer_ = std::thread([this] {
      SetThreadName("mx-renew");
      RenewHolds();
    });
    asio::co_spawn(io_, SweepCache(), asio::detached);
    log::Info("delivery worker " + worker_id_ + " pulling from " + std::to_string(n) + " queue shard(s) via " +
              std::to_string(config_.queue.size()) + " queue node(s)");
  }

  void Stop() override {
    {
      std::lock_guard lock(stop_mu_);
      if (stopping_.exchange(true)) return;
      stop_cv_.notify_all();
    }
    for (auto& s : shards_) {
      std::lock_guard lock(s->mu);
      if (s->ctx) s->ctx->TryCancel();
    }
    for (auto& t : pullers_) t.join();
    pullers_.clear();
    if (refresher_.joinable()) refresher_.join();
    if (renewer_.joinable()) renewer_.join();
    {
      // Ack callbacks touch this worker: wait for those in flight (each has a deadline).
      std::unique_lock lock(acks_mu_);
      acks_cv_.wait_for(lock, std::chrono::seconds(35), [&] { return acks_in_flight_ == 0; });
    }
    // QUIT to every cached session, then no Permit answer may still be on its way.
    {
      auto done = std::make_shared<std::promise<void>>();
      auto f = done->get_future();
      asio::co_spawn(io_, CloseAll(), [done](std::exception_ptr) { done->set_value(); });
      f.wait_for(std::chrono::seconds(10));
    }
    work_.reset();
    io_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    // Sessions cached after CloseAll, and waiters' timers, go while io_ exists.
    cache_.Clear();
    // No coroutine runs any more, so no Permit call starts; those in flight
    // end by their 2 s deadline and only post to the stopped io_context.
    for (int i = 0; i < 300 && permit_calls_.load() > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    resolver_.reset();
  }

 private:
  struct Shard {
    uint32_t id = 0;
    int64_t budget = 0;  // max messages in flight from this shard
    std::atomic<int64_t> in_flight{0};
    std::mutex mu;  // guards ctx and writes on stream
    grpc::ClientContext* ctx = nullptr;
    grpc::ClientReaderWriter<v1::PullRequest, v1::PullResponse>* stream = nullptr;
    std::mutex ack_mu;                        // guards the two below
    std::deque<v1::AckRequest> acks_waiting;  // one per delivered message, oldest first
    int acks_sending = 0;                     // Ack RPCs outstanding
  };

  // One Pull stream at a time to the shard's leader; follows leader changes.
  void PullLoop(std::shared_ptr<Shard> shard) {
    int backoff_ms = 200;
    while (!stopping_) {
      grpc::ClientContext ctx;
      auto target = router_.Leader(shard->id);
      auto stream = target.stub->Pull(&ctx);
      {
        std::lock_guard lock(shard->mu);
        shard->ctx = &ctx;
        shard->stream = stream.get();
        // Stop() may have run its cancel loop before this stream existed.
        if (stopping_) ctx.TryCancel();
        v1::PullRequest first;
        first.set_worker(worker_id_);
        first.set_shard(shard->id);
        int64_t free = draining_ ? 0 : shard->budget - shard->in_flight.load();
        first.set_credits(static_cast<uint32_t>(std::max<int64_t>(free, 0)));
        stream->Write(first);
      }
      v1::PullResponse resp;
      bool got_any = false;
      while (stream->Read(&resp)) {
        got_any = true;
        backoff_ms = 200;
        for (auto& m : *resp.mutable_messages()) {
          shard->in_flight.fetch_add(1);
          Probe::Get().InFlight(1);
          auto msg = std::make_shared<v1::LeasedMessage>(std::move(m));
          auto qid = msg->envelope().qid();
          asio::co_spawn(asio::make_strand(io_), DeliverMessage(msg, shard), [this, shard, qid](std::exception_ptr e) {
            if (!e) return;
            // Never expected; the lease expires and the recipients are retried.
            try {
              std::rethrow_exception(e);
            } catch (const std::exception& x) {
              log::Error(qid + ": delivery aborted: " + x.what());
            }
            ReturnCredit(shard);
          });
        }
      }
      {
        std::lock_guard lock(shard->mu);
        shard->ctx = nullptr;
        shard->stream = nullptr;
      }
      auto st = stream->Finish();
      if (stopping_) break;
      if (router_.Observe(shard->id, target.address, ctx, st)) {
        log::Info("shard " + std::to_string(shard->id) + ": following the leader to " +
                  router_.Leader(shard->id).address);
        continue;  // a new leader is known: reconnect at once
      }
      if (!got_any) {
        log::Warn("pull stream for shard " + std::to_string(shard->id) + " to " + target.address +
                  " ended: " + st.error_message());
      }
      {
        std::unique_lock lock(stop_mu_);  // a reconnect pause that Stop() cuts short
        stop_cv_.wait_for(lock, std::chrono::milliseconds(backoff_ms), [&] { return stopping_.load(); });
      }
      backoff_ms = std::min(backoff_ms * 2, 2000);
    }
  }

  // Every 2 s: the host status of every shard, merged (cluster-wide skips).
  void RefreshHostStatus() {
    while (!stopping_) {
      const int64_t started = clock_.NowUnixMicros();
      std::vector<v1::HostStatus> all;
      bool complete = true;
      for (uint32_t shard = 0; shard < router_.shards() && !stopping_; ++shard) {
        auto target = router_.Leader(shard);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        v1::ListHostStatusRequest req;
        req.set_shard(shard);
        v1::ListHostStatusResponse resp;
        auto st = target.stub->ListHostStatus(&ctx, req, &resp);
        router_.Observe(shard, target.address, ctx, st);
        if (!st.ok()) {
          complete = false;  // keep the old view rather than forget a shard's hosts
          break;
        }
        for (auto& h : *resp.mutable_hosts()) all.push_back(std::move(h));
      }
      if (complete && !stopping_) Probe::Get().HostsKnown(hosts_.Merge(all, started));
      if (!stopping_) RefreshSites(clock_.NowUnixMicros());
      std::unique_lock lock(stop_mu_);
      stop_cv_.wait_for(lock, std::chrono::seconds(2), [&] { return stopping_.load(); });
    }
  }

  // The source for a message from sender: its pool (the first naming the
  // sender's domain, else "default"), one source by weight. Null without
  // delivery.sources.
  const EgressPick* PickSource(const std::string& sender) {
    if (pools_.empty()) return nullptr;
    const std::string domain = DomainOf(sender);
    const EgressPoolPicks* pool = &pools_.back();
    for (const auto& p : pools_) {
      bool match = false;
      for (const auto& d : p.senders) match = match || (!domain.empty() && InDomain(domain, d));
      if (match) {
        pool = &p;
        break;
      }
    }
    thread_local std::minstd_rand rng(std::random_device{}());
    uint64_t n = std::uniform_int_distribution<uint64_t>(0, pool->total - 1)(rng);
    for (const auto& [i, w] : pool->picks) {
      if (n < w) return &sources_[i];
      n -= w;
    }
    return &sources_[pool->picks.back().first];
  }

  // Shard 0's suspended and slowed sites.
  void RefreshSites(int64_t started) {
    auto target = router_.Leader(0);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ListSiteStatusRequest req;
    v1::ListSiteStatusResponse resp;
    auto st = target.stub->ListSiteStatus(&ctx, req, &resp);
    router_.Observe(0, target.address, ctx, st);
    if (!st.ok()) return;  // keep the old view
    size_t suspended = 0, slowed = 0;
    sites_.Merge(resp, started, &suspended, &slowed);
    Probe::Get().SitesHeld(suspended, slowed);
  }

  // A reply rule matched: the site is suspended or slowed here at once and,
  // through shard 0, everywhere within seconds. A site already in that
  // state is left as it is (one trigger per episode, not one per reply).
  void TriggerSite(const SiteShape& shape, const ReplyRule& rule, const std::string& reply, const std::string& qid) {
    const int64_t now = clock_.NowUnixMicros();
    if (auto cur = sites_.Get(shape.site, now); cur && (cur->suspended() || !rule.suspend)) return;
    v1::SiteStatus st;
    st.set_site(shape.site);
    st.set_suspended(rule.suspend);
    st.set_until_unix_us(now + static_cast<int64_t>(rule.duration_s) * 1'000'000);
    st.set_reason(PrintableCut(reply, 300));
    st.set_by("reply rule /" + PrintableCut(rule.match, 80) + "/ on " + worker_id_);
    st.set_max_connections(rule.max_connections);
    st.set_message_rate_count(rule.message_rate.count);
    st.set_message_rate_period_s(rule.message_rate.none() ? 0 : rule.message_rate.period_s);
    st.set_since_unix_us(now);
    sites_.Set(st, now);
    Probe::Get().ReplyRuleFired(shape.named ? shape.site : "other", rule.suspend ? "suspend" : "slow");
    log::Warn("site " + shape.site + (rule.suspend ? " suspended" : " slowed") + " for " +
              std::to_string(rule.duration_s) + "s by a reply rule (" + qid + "): " + st.reason());
    auto call = AsyncCall<v1::SetSiteStatusRequest, v1::SetSiteStatusResponse>::WithDeadline(std::chrono::seconds(2));
    call->req.set_shard(0);
    *call->req.mutable_status() = std::move(st);
    auto target = router_.Leader(0);
    permit_calls_.fetch_add(1);  // waited for at Stop, like the Permit calls
    target.stub->async()->SetSiteStatus(
        &call->ctx, &call->req, &call->resp, [this, call, address = target.address](grpc::Status s) {
          router_.Observe(0, address, call->ctx, s);
          if (!s.ok()) {
            log::Warn("storing site " + call->req.status().site() + "'s state failed: " + s.error_message());
          }
          permit_calls_.fetch_sub(1);
        });
  }

  // Hard bounces onto shard 0's suppression list (asynchronous; a failure
  // is logged: the next hard bounce of the address adds it).
  void SendSuppressions(v1::SuppressRequest req) {
    auto call = AsyncCall<v1::SuppressRequest, v1::SuppressResponse>::WithDeadline(std::chrono::seconds(5));
    call->req = std::move(req);
    call->req.set_shard(0);
    auto target = router_.Leader(0);
    permit_calls_.fetch_add(1);  // waited for at Stop, like the Permit calls
    target.stub->async()->Suppress(
        &call->ctx, &call->req, &call->resp, [this, call, address = target.address](grpc::Status s) {
          router_.Observe(0, address, call->ctx, s);
          if (!s.ok()) {
            log::Warn("adding " + call->req.add(0).address() + " (and " + std::to_string(call->req.add_size() - 1) +
                      " more) to the suppression list failed: " + s.error_message());
          } else if (call->resp.added() > 0) {
            Probe::Get().Suppressed(call->resp.added());
            for (const auto& a : call->req.add()) {
              log::Info("suppression list: " + a.address() + " added (" + a.reason() + ")");
            }
          }
          permit_calls_.fetch_sub(1);
        });
  }

  static v1::HostOutcome HostOutcomeOf(const std::string& host, bool ok, const std::string& reply) {
    v1::HostOutcome h;
    h.set_host(host);
    h.set_ok(ok);
    h.set_reply(reply);
    return h;
  }

  void ReturnCredit(const std::shared_ptr<Shard>& shard, uint32_t n = 1) {
    shard->in_flight.fetch_sub(n);
    Probe::Get().InFlight(-static_cast<int64_t>(n));
    std::lock_guard lock(shard->mu);
    if (!shard->stream || draining_) return;  // the next stream (or undrain) grants fresh credits
    v1::PullRequest more;
    more.set_credits(n);
    shard->stream->Write(more);
  }

  void SetDraining(bool draining) override {
    if (draining_.exchange(draining) == draining) return;
    log::Info(draining ? "delivery draining: no new leases; deliveries in flight finish" : "delivery pulling again");
    for (auto& shard : shards_) {
      std::lock_guard lock(shard->mu);
      if (!shard->stream) continue;  // a new stream starts with no credits while draining
      // The queue forgets the credits it holds for us and takes the count
      // given instead: none while draining, the free slots after.
      v1::PullRequest req;
      req.set_revoke(true);
      if (!draining)
        req.set_credits(static_cast<uint32_t>(std::max<int64_t>(0, shard->budget - shard->in_flight.load())));
      shard->stream->Write(req);
    }
  }

  int64_t InFlight() const override {
    int64_t n = 0;
    for (const auto& shard : shards_) n += shard->in_flight.load();
    return n;
  }

  // Waits until a slot or cached session may have come free, or for `max`.
  awaitable<void> WaitForSlot(std::chrono::steady_clock::duration max) {
    auto t = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
    t->expires_after(std::min<std::chrono::steady_clock::duration>(max, std::chrono::seconds(1)));
    cache_.AddWaiter(t);
    boost::system::error_code ec;
    auto wait = t->async_wait(asio::redirect_error(use_awaitable, ec));
    co_await std::move(wait);
    cache_.RemoveWaiter(t);
  }

  // Closes a session (QUIT) and gives its slots back.
  awaitable<void> Close(std::unique_ptr<Conn> c) {
    if (c->session) {
      auto quit = asio::co_spawn(c->session->strand(), c->session->Quit(), use_awaitable);
      co_await std::move(quit);
    }
    ReleaseHold(c->holder);
    cache_.WakeWaiters();
  }

  awaitable<void> CloseAll() {
    auto all = CloseEach(cache_.TakeAll());
    co_await std::move(all);
  }

  // ConnectionCacheTimeout: idle sessions are closed once a second.
  awaitable<void> SweepCache() {
    asio::steady_timer t(co_await asio::this_coro::executor);
    while (!stopping_) {
      t.expires_after(std::chrono::seconds(1));
      boost::system::error_code ec;
      co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      auto expired = CloseEach(cache_.Expired(config_.connection_cache_timeout));
      co_await std::move(expired);
    }
  }

  // Permit holds live while their connections do: renewed every few seconds.
  void RenewHolds() {
    while (!stopping_) {
      {
        std::unique_lock lock(stop_mu_);
        stop_cv_.wait_for(lock, kPermitRenewEvery, [&] { return stopping_.load(); });
      }
      if (stopping_) break;
      v1::PermitRequest req;
      req.set_op(v1::PermitRequest::RENEW);
      req.set_ttl_ms(static_cast<uint32_t>(queue::kPermitTtlUs / 1000));
      {
        std::lock_guard lock(holds_mu_);
        if (holds_.empty()) continue;
        for (const auto& [holder, keys] : holds_) {
          auto* h = req.add_holds();
          h->set_holder(holder);
          for (const auto& k : keys) *h->add_keys() = k;
        }
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::PermitResponse resp;
      auto target = router_.Leader(0);
      auto st = target.stub->Permit(&ctx, req, &resp);
      router_.Observe(0, target.address, ctx, st);
      if (!st.ok()) log::Warn("renewing delivery permits failed: " + st.error_message());
    }
  }

  void ReleaseHold(const std::string& holder) {
    if (holder.empty()) return;
    {
      std::lock_guard lock(holds_mu_);
      holds_.erase(holder);
    }
    auto call = AsyncCall<v1::PermitRequest, v1::PermitResponse>::WithDeadline(std::chrono::seconds(2));
    call->req.set_op(v1::PermitRequest::RELEASE);
    call->req.add_holds()->set_holder(holder);
    auto target = router_.Leader(0);
    permit_calls_.fetch_add(1);
    target.stub->async()->Permit(&call->ctx, &call->req, &call->resp,
                                 [this, call, address = target.address](grpc::Status st) {
                                   router_.Observe(0, address, call->ctx, st);
                                   permit_calls_.fetch_sub(1);  // an unreleased hold expires with its TTL
                                 });
  }

  static Attempt Throttled(const std::string& why) {
    Attempt a;
    a.throttled = true;
    a.error = why;
    return a;
  }

  // Sleeps for d (a rate limit's spacing).
  awaitable<void> Sleep(std::chrono::steady_clock::duration d) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    t.expires_after(d);
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }

  // A rate (a site's messages or new connections): waits for the turn under
  // key (by value: a coroutine outlives its caller's temporaries). False
  // when it would not come before deadline.
  awaitable<bool> AwaitRate(std::string key, RateLimit rate, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      v1::PermitRequest req;
      req.set_op(v1::PermitRequest::RATE);
      auto* k = req.add_holds()->add_keys();
      k->set_key(key);
      k->set_limit(rate.count);
      k->set_period_s(rate.period_s);
      auto ask = AsyncPermit(router_, permit_calls_, std::move(req), use_awaitable);
      PermitAnswer pa = co_await std::move(ask);
      if (pa.granted) co_return true;
      if (std::chrono::steady_clock::now() + pa.retry_after > deadline) co_return false;
      auto sleep = Sleep(pa.retry_after);
      co_await std::move(sleep);
    }
  }

  // The connection slots keys name, for holder; false when none came free
  // before deadline.
  awaitable<bool> AwaitSlots(const std::string& holder, const std::vector<v1::PermitKey>& keys,
                             std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      v1::PermitRequest req;
      req.set_op(v1::PermitRequest::ACQUIRE);
      req.set_ttl_ms(static_cast<uint32_t>(queue::kPermitTtlUs / 1000));
      auto* h = req.add_holds();
      h->set_holder(holder);
      for (const auto& k : keys) *h->add_keys() = k;
      auto ask = AsyncPermit(router_, permit_calls_, std::move(req), use_awaitable);
      PermitAnswer pa = co_await std::move(ask);
      if (pa.granted) {
        std::lock_guard lock(holds_mu_);
        holds_[holder] = keys;
        co_return true;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) co_return false;
      const std::chrono::steady_clock::duration wait =
          std::min<std::chrono::steady_clock::duration>(pa.retry_after, deadline - now);
      auto slot = WaitForSlot(wait);
      co_await std::move(slot);
    }
  }

  // Closes every connection in conns.
  awaitable<void> CloseEach(std::vector<std::unique_ptr<Conn>> conns) {
    for (auto& c : conns) {
      auto close = Close(std::move(c));
      co_await std::move(close);
    }
  }

  // One transaction to host [ip]:port: a cached session (RSET first) or a
  // new one, within the site's limits (connection slots, message and
  // connection rates), cached again afterwards while it may carry more.
  awaitable<Attempt> Transact(const Route& route, const SiteShape& shape, const std::string& host,
                              const std::string& ip, uint16_t port, const SmtpClientConfig& cc,
                              const v1::LeasedMessage& m, const std::vector<ClientRcpt>& rcpts) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::min<std::chrono::steady_clock::duration>(config_.limit_wait, lease_ttl_ / 3);
    // A verified session is good only for the name it was verified for.
    const std::string tls_mode = !cc.tlsa.empty()                         ? "d:" + ToLower(host)
                                 : cc.verify                              ? "v:" + ToLower(host)
                                 : cc.tls == SmtpClientConfig::Tls::kNone ? "n"
                                 : cc.tls == SmtpClientConfig::Tls::kMay  ? "m"
                                                                          : "e";
    const std::string pool_key =
        shape.key + "|" + route.mailer->name + "|" + ip + "|" + std::to_string(port) + "|" + tls_mode;
    std::vector<v1::PermitKey> keys;
    if (shape.max_connections > 0) {
      keys.emplace_back();
      keys.back().set_key(shape.key);
      keys.back().set_limit(shape.max_connections);
    }
    if (config_.single_thread_delivery) {  // one connection per MX host, cluster-wide
      keys.emplace_back();
      keys.back().set_key("host:" + ToLower(host));
      keys.back().set_limit(1);
    }
    // The source's warm-up rate, then the site's message rate: the turns come
    // before a connection is taken.
    if (!shape.source_rate.none()) {
      auto rate = AwaitRate("src:" + shape.source, shape.source_rate, deadline);
      if (!co_await std::move(rate)) {
        Probe::Get().Throttled("source_rate");
        co_return Throttled("4.4.5 message rate limit of " + shape.source_rate.ToString() + " for source " +
                            shape.source + " reached; will retry shortly");
      }
    }
    if (!shape.message_rate.none()) {
      auto rate = AwaitRate(shape.key, shape.message_rate, deadline);
      if (!co_await std::move(rate)) {
        Probe::Get().Throttled("rate");
        co_return Throttled("4.4.5 message rate limit of " + shape.message_rate.ToString() + " for " + shape.site +
                            " reached; will retry shortly");
      }
    }
    bool retried_fresh = false;
    for (;;) {
      std::unique_ptr<Conn> conn = cache_.Take(pool_key);
      bool cached = false;
      if (conn) {
        auto reset = asio::co_spawn(conn->session->strand(), conn->session->Reset(), use_awaitable);
        const bool alive = co_await std::move(reset);
        if (!alive) {  // the peer dropped it while idle: not the host's fault
          auto close = Close(std::move(conn));
          co_await std::move(close);
          continue;
        }
        cached = true;
      } else {
        if (!shape.connection_rate.none()) {
          auto rate = AwaitRate("conn:" + shape.key.substr(5), shape.connection_rate, deadline);  // per source too
          if (!co_await std::move(rate)) {
            Probe::Get().Throttled("connection_rate");
            co_return Throttled("4.4.5 connection rate limit of " + shape.connection_rate.ToString() + " for " +
                                shape.site + " reached; will retry shortly");
          }
        }
        std::string holder;
        if (!keys.empty()) {
          holder = worker_id_ + "#" + std::to_string(conn_serial_.fetch_add(1));
          auto slots = AwaitSlots(holder, keys, deadline);
          if (!co_await std::move(slots)) {
            // Maybe a session to the same address came back meanwhile.
            if (cache_.Peek(pool_key)) continue;
            Probe::Get().Throttled("connections");
            co_return Throttled(config_.single_thread_delivery && shape.max_connections == 0
                                    ? "4.4.5 another delivery holds the connection to " + host +
                                          " (single_thread_delivery); will retry shortly"
                                    : "4.4.5 connection limit for " + shape.site + " reached; will retry shortly");
          }
        }
        conn = std::make_unique<Conn>();
        conn->holder = holder;
        conn->pool_key = pool_key;
        Attempt failed;
        auto strand = asio::make_strand(io_.get_executor());
        auto open = asio::co_spawn(strand, SmtpSession::Open(strand, ip, port, cc, host, &failed), use_awaitable);
        conn->session = co_await std::move(open);
        if (!conn->session) {
          auto close = Close(std::move(conn));
          co_await std::move(close);
          co_return failed;
        }
      }
      Probe::Get().Connection(cached);
      auto send =
          asio::co_spawn(conn->session->strand(), conn->session->Send(m.envelope(), m.body(), rcpts), use_awaitable);
      Attempt at = co_await std::move(send);
      if (at.try_next && cached && !retried_fresh) {
        // A cached session that broke before any recipient was answered: once
        // more on a new connection before blaming the host.
        retried_fresh = true;
        auto close = Close(std::move(conn));
        co_await std::move(close);
        continue;
      }
      const uint32_t per_conn = shape.max_messages_per_connection;
      if (conn->session->usable() && config_.connection_cache_size > 0 &&
          (per_conn == 0 || conn->session->transactions() < per_conn)) {
        auto evict = CloseEach(cache_.Put(std::move(conn), config_.connection_cache_size));
        co_await std::move(evict);
        cache_.WakeWaiters();
      } else {
        auto close = Close(std::move(conn));
        co_await std::move(close);
      }
      co_return at;
    }
  }

  awaitable<std::vector<Outcome>> DeliverDomain(const std::string& domain, const Route& route, std::string* site,
                                                std::string* source, const v1::LeasedMessage& m,
                                                const std::vector<ClientRcpt>& rcpts,
                                                std::vector<v1::HostOutcome>* host_outcomes) {
    auto all = [&](v1::Outcome o, const std::string& dsn, const std::string& text) {
      return std::vector<Outcome>(rcpts.size(), Outcome{RcptOutcome{o, text, dsn}, "", false, "", false});
    };
    // A mailertable error: entry, and sendmail's per-mailer M=.
    if (!route.error.empty()) co_return all(v1::OUTCOME_BOUNCED, EnhancedCode(route.error.substr(4)), route.error);
    if (route.mailer->max_message_size > 0 && m.body().size() > route.mailer->max_message_size) {
      co_return all(v1::OUTCOME_BOUNCED, "5.3.4",
                    "552 5.3.4 Message is too large for mailer " + route.mailer->name + " (" +
                        std::to_string(m.body().size()) + " > " + std::to_string(route.mailer->max_message_size) +
                        " bytes)");
    }
    MxAnswer ans;
    if (route.relay) {
      auto resolve = AsyncResolve(*resolver_, !route.relay->literal, route.relay->host, use_awaitable);
      ans = co_await std::move(resolve);
    } else {
      auto resolve = AsyncResolve(*resolver_, true, domain, use_awaitable);
      ans = co_await std::move(resolve);
    }
    switch (ans.kind) {
      case MxAnswer::Kind::kNoSuchDomain: co_return all(v1::OUTCOME_BOUNCED, "5.1.2", "550 5.1.2 " + ans.error);
      case MxAnswer::Kind::kNullMx: co_return all(v1::OUTCOME_BOUNCED, "5.1.10", "556 5.1.10 " + ans.error);
      case MxAnswer::Kind::kTempFail: co_return all(v1::OUTCOME_DEFERRED, "4.4.3", ans.error);
      case MxAnswer::Kind::kOk: break;
    }
    // Secondary-MX role (sendmail: MX hosts in $=w): we and every host no
    // better than us are dropped; if we are the best, the mail would loop.
    if (!route.relay) {
      int self_pref = -1;
      for (const auto& h : ans.hosts) {
        std::string name = ToLower(h.name);
        if (!name.empty() && name.back() == '.') name.pop_back();
        if (self_names_.count(name) && (self_pref < 0 || h.preference < self_pref)) self_pref = h.preference;
      }
      if (self_pref >= 0) {
        std::erase_if(ans.hosts, [&](const MxHost& h) { return h.preference >= self_pref; });
        if (ans.hosts.empty()) {
          co_return all(v1::OUTCOME_BOUNCED, "5.4.6",
                        "554 5.4.6 mail for " + domain + " loops back to myself (this cluster is its best MX)");
        }
      }
    }
    const uint16_t port = route.relay ? route.relay->port : config_.smtp_port;
    std::string last_error = "no usable MX host";
    const int64_t hoststatus_us =
        std::chrono::duration_cast<std::chrono::microseconds>(config_.host_status_timeout).count();
    // The site: its limits, shared by every domain with the same MX hosts.
    std::vector<std::string> mx_names;
    for (const auto& h : ans.hosts) mx_names.push_back(h.name);
    SiteShape shape = routing_.shaping().For(domain, mx_names);
    if (shape.named) *site = shape.site;
    // Reputation backoff: a suspended site waits (its recipients come back
    // when it ends, spread over a minute); a slowed one gets tighter limits.
    auto suspended_outcomes = [&](const v1::SiteStatus& st) {
      // Spread over a tenth of the suspension, at most a minute.
      const int64_t span = std::clamp<int64_t>((st.until_unix_us() - st.since_unix_us()) / 10, 1, 60'000'000);
      const int64_t spread = static_cast<int64_t>(std::hash<std::string>{}(m.envelope().qid()) % span);
      auto out = all(v1::OUTCOME_DEFERRED, "4.4.5",
                     "4.4.5 site " + st.site() + " is suspended for " +
                         log::FormatDelay(std::max<int64_t>(0, st.until_unix_us() - clock_.NowUnixMicros())) + " (" +
                         st.by() + "): " + st.reason());
      for (auto& o : out) {
        o.throttled = true;
        o.not_before = st.until_unix_us() + spread;
      }
      Probe::Get().SuspendedPutBack(out.size());
      return out;
    };
    if (auto st = sites_.Get(shape.site, clock_.NowUnixMicros())) {
      if (st->suspended()) co_return suspended_outcomes(*st);
      if (st->max_connections() > 0 && (shape.max_connections == 0 || st->max_connections() < shape.max_connections)) {
        shape.max_connections = st->max_connections();
      }
      if (st->message_rate_count() > 0)
        shape.message_rate = RateLimit{st->message_rate_count(), st->message_rate_period_s()};
    }
    const bool encrypt = shape.tls == SiteTls::kRequired ||
                         (shape.tls == SiteTls::kDefault && encrypt_domains_.count(ToLower(domain)) > 0);
    SmtpClientConfig base = encrypt                       ? encrypt_client_
                            : shape.tls == SiteTls::kNone ? plain_client_
                            : shape.tls == SiteTls::kMay  ? may_client_
                                                          : client_;
    base.lmtp = route.mailer->lmtp;
    // MTA-STS: an enforce policy keeps only the MX hosts it lists and
    // requires verified TLS with them; testing only logs.
    if (sts_ && !route.relay) {
      auto lookup = sts_->Lookup(domain);
      MtaSts::Answer sts = co_await std::move(lookup);
      const auto mode = sts.policy ? sts.policy->mode : StsPolicy::Mode::kNone;
      Probe::Get().MtaSts(StsModeName(mode));
      if (mode != StsPolicy::Mode::kNone) {
        const StsPolicy& policy = *sts.policy;
        std::string unlisted;
        for (const auto& h : ans.hosts) {
          if (!policy.Matches(h.name)) unlisted += (unlisted.empty() ? "" : ", ") + h.name;
        }
        if (mode == StsPolicy::Mode::kTesting) {
          if (!unlisted.empty()) {
            log::Mail(m.envelope().qid(), "MTA-STS testing policy of " + domain + " (id " + policy.id +
                                              ") does not list " + unlisted + "; delivering anyway");
          }
        } else {
          std::erase_if(ans.hosts, [&](const MxHost& h) { return !policy.Matches(h.name); });
          if (ans.hosts.empty()) {
            co_return all(v1::OUTCOME_DEFERRED, "4.7.5",
                          "4.7.5 MTA-STS policy of " + domain + " (enforce, id " + policy.id +
                              ") lists none of its MX hosts (" + unlisted + "; policy mx: " + policy.MxList() + ")");
          }
          SmtpClientConfig verified = verified_client_;
          verified.lmtp = base.lmtp;
          verified.helo_name = base.helo_name;
          base = std::move(verified);
        }
      }
    }
    // Egress: the message's pool picks a source; limits hold per site and source.
    if (const EgressPick* src = PickSource(m.envelope().sender())) {
      base.source_address = src->address;
      if (!src->ehlo.empty()) base.helo_name = src->ehlo;
      shape.key += "@" + src->name;
      shape.source = src->name;
      shape.source_rate = src->rate;
      *source = src->name;
    }
    auto try_hosts = [&](const MxAnswer& hosts, uint16_t p) -> awaitable<std::optional<std::vector<Outcome>>> {
      for (const auto& host : hosts.hosts) {
        const std::string key = ToLower(host.name);
        // PersistentHostStatus: a host that failed recently is not tried again.
        if (auto reason = hosts_.SkipReason(key, clock_.NowUnixMicros(), hoststatus_us)) {
          last_error = *reason;
          Probe::Get().HostSkipped();
          log::Mail(m.envelope().qid(), "relay=" + host.name + ": skipped, host status: " + *reason);
          continue;
        }
        bool host_failed = false;
        SmtpClientConfig clear_cc = plain_client_;
        clear_cc.lmtp = route.mailer->lmtp;
        clear_cc.helo_name = base.helo_name;
        clear_cc.source_address = base.source_address;
        // DANE (RFC 7672): a host of a DNSSEC-secure MX answer with secure
        // TLSA records gets TLS checked against them, or no mail.
        SmtpClientConfig host_cc = base;
        if (dane_ && hosts.secure && !route.relay) {
          auto lookup = AsyncTlsa(*resolver_, host.name, p, use_awaitable);
          TlsaAnswer tlsa = co_await std::move(lookup);
          if (tlsa.kind == TlsaAnswer::Kind::kTempFail) {
            // A secure MX whose TLSA cannot be had: not sent without it.
            last_error = "4.7.5 DANE: TLSA lookup failed (" + tlsa.error + ")";
            log::Mail(m.envelope().qid(), "relay=" + host.name + ": " + last_error + ", trying next host");
            Probe::Get().Dane("lookup_failed");
            continue;
          }
          if (tlsa.kind == TlsaAnswer::Kind::kOk && tlsa.secure) {
            std::vector<Tlsa> usable;  // DANE-TA(2) and DANE-EE(3) only (RFC 7672 3.1.3)
            for (auto& t : tlsa.records) {
              if ((t.usage == 2 || t.usage == 3) && t.selector <= 1 && t.mtype <= 2) usable.push_back(std::move(t));
            }
            SmtpClientConfig dane_cc = usable.empty() ? encrypt_client_ : dane_client_;  // none usable: TLS, unchecked
            dane_cc.tlsa = std::move(usable);
            dane_cc.lmtp = base.lmtp;
            dane_cc.helo_name = base.helo_name;
            dane_cc.source_address = base.source_address;
            host_cc = std::move(dane_cc);
            Probe::Get().Dane(host_cc.tlsa.empty() ? "unusable" : "secure");
          } else {
            Probe::Get().Dane("insecure");
          }
        }
        for (const auto& ip : host.addrs) {
          // Opportunistic TLS that failed at this address lately: straight to plaintext.
          const bool remembered = host_cc.tls == SmtpClientConfig::Tls::kMay && TlsBroken(ip);
          if (remembered) Probe::Get().TlsFailureRemembered();
          auto attempt = Transact(route, shape, host.name, ip, p, remembered ? clear_cc : host_cc, m, rcpts);
          Attempt at = co_await std::move(attempt);
          if (at.tls_failed && host_cc.tls == SmtpClientConfig::Tls::kMay) {
            // Opportunistic TLS that failed: the same host again, in the clear,
            // and without trying TLS there for delivery.tls_failure_memory.
            log::Mail(m.envelope().qid(),
                      "relay=" + host.name + " [" + ip + "]: " + at.error + ", retrying without TLS");
            RememberTlsBroken(ip);
            auto clear = Transact(route, shape, host.name, ip, p, clear_cc, m, rcpts);
            at = co_await std::move(clear);
          }
          // Reputation backoff: the replies of this attempt against the site's rules.
          if (!at.throttled) {
            const ReplyRule* fired = nullptr;
            std::string matched;
            if (at.try_next || at.rcpts.empty()) {
              if ((fired = shape.MatchReply(at.error))) matched = at.error;
            }
            for (const auto& r : at.rcpts) {
              if (fired) break;
              if (!r.reply.empty() && r.reply[0] != '2' && (fired = shape.MatchReply(r.reply))) matched = r.reply;
            }
            if (fired) {
              TriggerSite(shape, *fired, matched, m.envelope().qid());
              if (fired->suspend && at.try_next) {  // no other host of the site either
                if (auto st = sites_.Get(shape.site, clock_.NowUnixMicros())) co_return suspended_outcomes(*st);
              }
              if (!fired->suspend) {  // tighter limits from the next connection on
                if (fired->max_connections > 0 &&
                    (shape.max_connections == 0 || fired->max_connections < shape.max_connections)) {
                  shape.max_connections = fired->max_connections;
                }
                if (!fired->message_rate.none()) shape.message_rate = fired->message_rate;
              }
            }
          }
          if (at.throttled) {  // a limit, not the host: the whole destination waits its turn
            log::Mail(m.envelope().qid(), "relay=" + host.name + ": " + at.error);
            auto out = all(v1::OUTCOME_DEFERRED, "4.4.5", at.error);
            for (auto& o : out) o.throttled = true;
            co_return out;
          }
          // sendmail style: "mx.example.com. [192.0.2.1]", or "[192.0.2.1] [192.0.2.1]" for a literal.
          std::string relay = (host.name == ip ? "[" + ip + "]" : host.name + ".") + " [" + ip + "]";
          if (at.try_next) {
            last_error = at.error + " with " + relay;
            log::Mail(m.envelope().qid(), "relay=" + relay + ": " + at.error + ", trying next host");
            // A certificate that fails a domain's policy is not the host being
            // down: other domains may still use it.
            if (!((host_cc.verify || !host_cc.tlsa.empty()) && at.tls_failed)) host_failed = true;
            continue;
          }
          const int64_t now = clock_.NowUnixMicros();
          if (hosts_.ShouldReport(key, true, now)) {
            host_outcomes->push_back(HostOutcomeOf(key, true, at.rcpts.empty() ? "" : at.rcpts.front().reply));
            hosts_.Record(key, true, "250 ok", now);
          }
          std::vector<Outcome> out;
          for (auto& r : at.rcpts) out.push_back(Outcome{std::move(r), relay, at.dsn_forwarded, at.tls, false});
          co_return out;
        }
        if (host_failed) {  // every address of this host failed
          hosts_.Record(key, false, last_error, clock_.NowUnixMicros());
          host_outcomes->push_back(HostOutcomeOf(key, false, last_error));
        }
      }
      co_return std::nullopt;
    };
    {
      auto first = try_hosts(ans, port);
      if (auto out = co_await std::move(first)) co_return *out;
    }
    if (fallback_) {  // FallbackMXhost: after every MX failed
      auto resolve = AsyncResolve(*resolver_, !fallback_->literal, fallback_->host, use_awaitable);
      MxAnswer fb = co_await std::move(resolve);
      if (fb.kind == MxAnswer::Kind::kOk) {
        auto second = try_hosts(fb, fallback_->port);
        if (auto out = co_await std::move(second)) co_return *out;
      }
    }
    co_return all(v1::OUTCOME_DEFERRED, "4.4.1", last_error);
  }

  awaitable<void> DeliverMessage(std::shared_ptr<v1::LeasedMessage> m, std::shared_ptr<Shard> shard) {
    const auto& env = m->envelope();
    auto start = std::chrono::steady_clock::now();
    // Group the leased recipients by destination domain, keeping their order.
    std::map<std::string, std::vector<int>> by_domain;
    for (int i = 0; i < m->recipients_size(); ++i) by_domain[DomainOf(m->recipients(i).address())].push_back(i);

    v1::AckRequest ack;
    ack.set_worker(worker_id_);
    v1::SuppressRequest suppress;  // hard bounces to put on the suppression list
    const int64_t age = clock_.NowUnixMicros() - env.arrival_unix_us();
    const int64_t warn_us = std::chrono::duration_cast<std::chrono::microseconds>(config_.queue_warn).count();
    const int64_t return_us = std::chrono::duration_cast<std::chrono::microseconds>(config_.queue_return).count();
    std::vector<DsnRecipient> failed, delayed, relayed;
    std::vector<v1::HostOutcome> host_outcomes;
    for (const auto& [domain, all_idx] : by_domain) {
      const Route route = routing_.RouteFor(domain);
      // mxctl bounce: returned to the sender without another attempt.
      std::vector<int> idx;
      std::vector<ClientRcpt> rcpts;
      std::vector<int> bounced;
      for (int i : all_idx) {
        const auto& r = m->recipients(i);
        if (r.operator_bounce()) {
          bounced.push_back(i);
          continue;
        }
        idx.push_back(i);
        rcpts.push_back(ClientRcpt{r.address(), r.notify(), r.orcpt()});
      }
      auto attempt_start = std::chrono::steady_clock::now();
      std::vector<Outcome> outs;
      std::string site;    // when a shaping rule names it
      std::string source;  // the egress source, when delivery.sources are configured
      if (!rcpts.empty()) {
        auto deliver = DeliverDomain(domain, route, &site, &source, *m, rcpts, &host_outcomes);
        outs = co_await std::move(deliver);
      }
      for (int i : bounced) {
        idx.push_back(i);
        outs.push_back(Outcome{
            RcptOutcome{v1::OUTCOME_BOUNCED, "550 5.0.0 Message returned by the postmaster (mxctl bounce)", "5.0.0"},
            "", false, "", false});
      }
      const std::string& mailer = route.mailer->name;
      int64_t xdelay =
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - attempt_start)
              .count();
      for (size_t k = 0; k < idx.size(); ++k) {
        const auto& rc = m->recipients(idx[k]);
        Outcome& o = outs[k];
        const DsnOwed owed =
            SettleOutcome(env, rc, o.dsn_forwarded, age, warn_us, return_us, &o.r.outcome, &o.r.reply, &o.r.dsn_status);
        auto* res = ack.add_results();
        res->set_qid(env.qid());
        res->set_index(rc.index());
        res->set_outcome(o.r.outcome);
        res->set_reply(o.r.reply);
        res->set_dsn_status(o.r.dsn_status);
        res->set_relay(o.relay);
        res->set_mailer(mailer);
        res->set_throttled(o.throttled);
        if (o.not_before > 0) res->set_not_before_unix_us(o.not_before);
        if (o.r.outcome == v1::OUTCOME_DELIVERED) res->set_bytes(env.size());
        // Why it was not delivered (throttled put-backs are not the destination's answer).
        std::string cls;
        if (o.r.outcome != v1::OUTCOME_DELIVERED && !o.throttled) {
          cls = std::string(BounceClassName(ClassifyReply(o.r.reply, o.r.dsn_status)));
          Probe::Get().ReplyClass(cls, o.r.outcome == v1::OUTCOME_BOUNCED ? "bounced" : "deferred");
          // A hard bounce for a mailbox that does not exist, answered by the
          // destination itself: onto the suppression list.
          if (config_.suppress_hard_bounces && o.r.outcome == v1::OUTCOME_BOUNCED && !o.relay.empty() &&
              cls == "invalid_recipient" && !o.r.reply.empty() && o.r.reply[0] == '5') {
            v1::Suppression* sup = suppress.add_add();
            sup->set_address(rc.address());
            sup->set_reason(PrintableCut(o.r.reply, 300));
            sup->set_bounce_class(cls);
            sup->set_by(worker_id_ + " (" + env.qid() + ")");
          }
        }
        const char* stat = o.r.outcome == v1::OUTCOME_DELIVERED  ? "Sent"
                           : o.r.outcome == v1::OUTCOME_DEFERRED ? "Deferred"
                                                                 : "User unknown";
        std::string stat_text =
            o.r.outcome == v1::OUTCOME_BOUNCED && o.r.dsn_status.rfind("5.1.1", 0) != 0 ? "Service unavailable" : stat;
        log::Mail(env.qid(),
                  "to=<" + rc.address() +
                      ">, delay=" + log::FormatDelay(clock_.NowUnixMicros() - env.arrival_unix_us()) + ", xdelay=" +
                      log::FormatDelay(xdelay) + ", mailer=" + mailer + ", pri=" + std::to_string(env.priority()) +
                      ", relay=" + (o.relay.empty() ? domain : o.relay) + (o.tls.empty() ? "" : ", tls=" + o.tls) +
                      (site.empty() ? "" : ", site=" + site) + (source.empty() ? "" : ", source=" + source) +
                      ", dsn=" + o.r.dsn_status + (cls.empty() ? "" : ", class=" + cls) +
                      ", stat=" + (o.r.outcome == v1::OUTCOME_BOUNCED ? stat_text : stat) + " (" + o.r.reply + ")");
        const std::string result = o.r.outcome == v1::OUTCOME_DELIVERED  ? "delivered"
                                   : o.r.outcome == v1::OUTCOME_DEFERRED ? "deferred"
                                                                         : "bounced";
        Probe::Get().Delivery(result, mailer,
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        if (rc.attempts() > 0 && !o.throttled) Probe::Get().Retry();
        if (o.r.outcome != v1::OUTCOME_DEFERRED) {
          Probe::Get().Settled(result, static_cast<double>(clock_.NowUnixMicros() - env.arrival_unix_us()) / 1e6);
        }
        DsnRecipient d{rc.address(), rc.orcpt(), o.r.dsn_status, o.relay, o.r.reply};
        switch (owed) {
          case DsnOwed::kFailed: failed.push_back(std::move(d)); break;
          case DsnOwed::kDelayed:
            res->set_delay_warned(true);  // Timeout.queuewarn: once per recipient
            delayed.push_back(std::move(d));
            break;
          case DsnOwed::kRelayed:
            d.status = "2.0.0";
            relayed.push_back(std::move(d));
            break;
          case DsnOwed::kNone: break;
        }
      }
    }
    QueueDsns(*m, std::move(failed), std::move(delayed), std::move(relayed), return_us, &ack);
    for (auto& h : host_outcomes) *ack.add_hosts() = std::move(h);
    if (suppress.add_size() > 0) SendSuppressions(std::move(suppress));
    m.reset();  // the body is no longer needed while the ack is in flight
    // Ack on gRPC's callback thread; the credit returns when it completes.
    ack.set_shard(shard->id);
    {
      std::lock_guard lock(acks_mu_);
      ++acks_in_flight_;
    }
    {
      std::lock_guard lock(shard->ack_mu);
      shard->acks_waiting.push_back(std::move(ack));
    }
    SendWaitingAcks(shard);
  }

  // Sends what waits for the shard as one Ack, unless enough are outstanding
  // (their completion sends the rest).
  void SendWaitingAcks(const std::shared_ptr<Shard>& shard) {
    auto op = std::make_shared<AckOp>();
    {
      std::lock_guard lock(shard->ack_mu);
      if (shard->acks_waiting.empty() || shard->acks_sending >= kAcksInFlightPerShard) return;
      size_t bytes = 0;
      while (!shard->acks_waiting.empty() && op->parts.size() < kMaxAcksPerRequest) {
        size_t b = shard->acks_waiting.front().ByteSizeLong();
        if (!op->parts.empty() && bytes + b > kMaxAckRequestBytes) break;
        bytes += b;
        op->parts.push_back(std::move(shard->acks_waiting.front()));
        shard->acks_waiting.pop_front();
      }
      ++shard->acks_sending;
    }
    op->shard = shard;
    op->deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
    if (op->parts.size() == 1) {
      op->req = std::move(op->parts.front());  // nothing to split if refused
    } else {
      op->req.set_worker(worker_id_);
      op->req.set_shard(shard->id);
      for (const auto& part : op->parts) {
        op->req.mutable_results()->MergeFrom(part.results());
        op->req.mutable_dsns()->MergeFrom(part.dsns());
        op->req.mutable_hosts()->MergeFrom(part.hosts());
      }
    }
    SendAck(op);
  }

  // The DSNs a delivery attempt owes, queued with its Ack (so they exist iff
  // the outcomes were recorded): a bounce to the sender (or, for a bounce that
  // bounced, a double bounce to the postmaster), the postmaster's copy of
  // bounce headers, a delay warning and a "relayed" receipt.
  void QueueDsns(const v1::LeasedMessage& m, std::vector<DsnRecipient> failed, std::vector<DsnRecipient> delayed,
                 std::vector<DsnRecipient> relayed, int64_t return_us, v1::AckRequest* ack) {
    const auto& env = m.envelope();
    auto make = [&](DsnAction action, std::vector<DsnRecipient> rcpts) {
      DsnInput in;
      in.action = action;
      in.original = env;
      in.original_body = m.body();
      in.rcpts = std::move(rcpts);
      in.reporting_mta = hostname_;
      in.dsn_qid = qids_.Next();
      in.now_unix_us = clock_.NowUnixMicros();
      in.queue_warn_us = in.now_unix_us - env.arrival_unix_us();
      in.retry_until_us = env.arrival_unix_us() + return_us;
      return in;
    };
    auto queue = [&](const DsnInput& in, v1::NewMessage msg, const char* what) {
      log::Mail(env.qid(),
                in.dsn_qid + ": " + what + " to <" + msg.recipients(0).address() + ">: " + in.rcpts.front().diagnostic);
      *ack->add_dsns() = std::move(msg);
      Probe::Get().DsnSent();
    };
    if (!failed.empty()) {
      DsnInput in = make(DsnAction::kFailed, std::move(failed));
      v1::NewMessage msg;
      if (!env.is_dsn()) {
        if (BuildDsn(in, &msg)) queue(in, std::move(msg), "DSN");
        if (!config_.postmaster_copy.empty()) {
          DsnInput copy = in;
          copy.dsn_qid = qids_.Next();
          copy.to = config_.postmaster_copy;
          copy.headers_only = true;
          if (BuildDsn(copy, &msg)) queue(copy, std::move(msg), "postmaster copy");
        }
      } else if (BuildDoubleBounce(in, config_.double_bounce_address, &msg)) {
        queue(in, std::move(msg), "double bounce");
      } else {
        log::Mail(env.qid(), "undeliverable DSN dropped (double_bounce_address empty or a double bounce bounced)");
      }
    }
    if (!delayed.empty()) {
      DsnInput in = make(DsnAction::kDelayed, std::move(delayed));
      v1::NewMessage msg;
      if (BuildDsn(in, &msg)) queue(in, std::move(msg), "delay DSN");
    }
    if (!relayed.empty()) {
      DsnInput in = make(DsnAction::kRelayed, std::move(relayed));
      v1::NewMessage msg;
      if (BuildDsn(in, &msg)) queue(in, std::move(msg), "relay DSN");
    }
  }

  // An Ack and its retries: the leases live in the replicated state, so a new
  // leader accepts acks for leases its predecessor handed out.
  struct AckOp {
    std::vector<v1::AckRequest> parts;  // the deliveries' own acks, merged into req
    v1::AckRequest req;
    v1::AckResponse resp;
    std::unique_ptr<grpc::ClientContext> ctx;
    std::shared_ptr<Shard> shard;
    std::string address;
    std::chrono::system_clock::time_point deadline;
    grpc::Alarm alarm;
    int attempts = 0;
  };

  void SendAck(const std::shared_ptr<AckOp>& op) {
    auto target = router_.Leader(op->shard->id);
    op->address = target.address;
    op->ctx = std::make_unique<grpc::ClientContext>();
    op->ctx->set_deadline(std::min(op->deadline, std::chrono::system_clock::now() + std::chrono::seconds(5)));
    ++op->attempts;
    target.stub->async()->Ack(op->ctx.get(), &op->req, &op->resp, [this, op](grpc::Status s) { AckDone(op, s); });
  }

  void AckDone(const std::shared_ptr<AckOp>& op, const grpc::Status& s) {
    const bool new_leader = router_.Observe(op->shard->id, op->address, *op->ctx, s);
    // Acks are idempotent (a recipient already final ignores a second one), so
    // anything but a verdict on the request itself is worth another try:
    // e.g. CANCELLED from a queue replica shutting down mid-call.
    const auto code = s.error_code();
    const bool retryable = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                           code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::ABORTED ||
                           code == grpc::StatusCode::UNKNOWN || code == grpc::StatusCode::INTERNAL;
    const auto now = std::chrono::system_clock::now();
    if (!s.ok() && retryable && !stopping_ && now < op->deadline) {
      if (new_leader) return SendAck(op);
      op->alarm.Set(std::min(op->deadline, now + std::chrono::milliseconds(100 << std::min(op->attempts, 4))),
                    [this, op](bool fired) {
                      if (fired) return SendAck(op);
                      AckDone(op, grpc::Status(grpc::StatusCode::CANCELLED, "ack retry cancelled"));
                    });
      return;
    }
    const auto& shard = op->shard;
    if (!s.ok() && op->parts.size() > 1 && !retryable) {
      // A verdict on the merged request: each delivery's ack goes on its own,
      // so one bad part does not cost the others their outcome.
      log::Warn("ack of " + std::to_string(op->parts.size()) + " deliveries to shard " + std::to_string(shard->id) +
                " refused (" + s.error_message() + "); sending them one by one");
      {
        std::lock_guard lock(shard->ack_mu);
        for (auto it = op->parts.rbegin(); it != op->parts.rend(); ++it) {
          shard->acks_waiting.push_front(std::move(*it));
        }
      }
      SplitAcks(shard, op->parts.size());
      return;
    }
    if (!s.ok()) {
      Probe::Get().AckFailed();
      log::Warn("ack to shard " + std::to_string(shard->id) + " failed (" + s.error_message() +
                "); the lease will expire and the recipients be retried");
    }
    const auto n = static_cast<uint32_t>(op->parts.size());
    {
      std::lock_guard lock(shard->ack_mu);
      --shard->acks_sending;
    }
    SendWaitingAcks(shard);
    ReturnCredit(shard, n);
    std::lock_guard lock(acks_mu_);
    acks_in_flight_ -= n;
    if (acks_in_flight_ == 0) acks_cv_.notify_all();
  }

  // Sends the first n waiting acks one request each (after a merged one was refused).
  void SplitAcks(const std::shared_ptr<Shard>& shard, size_t n) {
    std::vector<std::shared_ptr<AckOp>> ops;
    {
      std::lock_guard lock(shard->ack_mu);
      --shard->acks_sending;  // the refused request
      for (size_t i = 0; i < n && !shard->acks_waiting.empty(); ++i) {
        auto op = std::make_shared<AckOp>();
        op->parts.push_back(std::move(shard->acks_waiting.front()));
        shard->acks_waiting.pop_front();
        op->req = std::move(op->parts.front());
        op->shard = shard;
        op->deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
        ++shard->acks_sending;
        ops.push_back(std::move(op));
      }
    }
    for (auto& op : ops) SendAck(op);
  }

  DeliveryConfig config_;
  Routing routing_;
  std::chrono::seconds lease_ttl_;
  queue::QueueRouter router_;
  std::string hostname_;
  std::unique_ptr<Resolver> resolver_;
  const Clock& clock_;
  QidGenerator qids_;
  SmtpClientConfig client_, encrypt_client_, plain_client_, may_client_;
  SmtpClientConfig verified_client_;  // MTA-STS enforce: kEncrypt with certificate checks
  SmtpClientConfig dane_client_;      // DANE: kEncrypt on a DANE-enabled context
  bool dane_ = false;
  std::unique_ptr<MtaSts> sts_;  // null: delivery.mta_sts is off
  std::mutex tls_mu_;
  std::unordered_map<std::string, int64_t> tls_broken_;  // address -> until (µs): STARTTLS failed there
  std::set<std::string> encrypt_domains_;
  std::set<std::string> self_names_;
  std::optional<Relay> fallback_;
  SessionCache cache_;
  std::mutex holds_mu_;
  std::unordered_map<std::string, std::vector<v1::PermitKey>> holds_;  // live permit holds by holder
  std::atomic<uint64_t> conn_serial_{0};
  std::atomic<int64_t> permit_calls_{0};
  std::thread renewer_;
  std::string worker_id_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  std::vector<std::shared_ptr<Shard>> shards_;
  std::vector<std::thread> pullers_;
  HostCache hosts_;
  SiteBook sites_;
  std::vector<EgressPick> sources_;
  std::vector<EgressPoolPicks> pools_;  // "default" last
  std::thread refresher_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::mutex acks_mu_;
  std::condition_variable acks_cv_;
  int64_t acks_in_flight_ = 0;
};

}  // namespace

Result<std::unique_ptr<DeliveryWorker>> StartDelivery(const Config& config, std::unique_ptr<Resolver> resolver,
                                                      const Clock& clock) {
  auto routing = Routing::Load(config.delivery, config.config_dir);
  if (!routing.ok()) return routing.status();
  // The TLS contexts first: a bad trust anchor file stops the start before any thread does.
  std::shared_ptr<asio::ssl::context> sts_ctx, dane_ctx;
  if (config.delivery.mta_sts) {
    // Verified TLS: the configured trust anchors, else the system's.
    sts_ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    sts_ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                         asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1);
    boost::system::error_code ec;
    const std::string& ca = config.delivery.tls_ca_file;
    if (ca.empty()) {
      sts_ctx->set_default_verify_paths(ec);
    } else {
      sts_ctx->load_verify_file(ca.front() == '/' ? ca : config.config_dir + "/" + ca, ec);
    }
    if (ec) {
      return Status(Code::kInvalidArgument,
                    "delivery.tls_ca_file: " + (ca.empty() ? "system" : ca) + ": " + ec.message());
    }
  }
  if (config.delivery.dane) {
    dane_ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
    dane_ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                          asio::ssl::context::no_sslv3);
    if (SSL_CTX_dane_enable(dane_ctx->native_handle()) <= 0) {
      return Status(Code::kInternal, "delivery.dane: OpenSSL cannot enable DANE");
    }
  }
  auto w = std::make_unique<Worker>(config, std::move(routing).value(), std::move(resolver), clock);
  if (sts_ctx) w->EnableMtaSts(std::move(sts_ctx));
  if (dane_ctx) w->EnableDane(std::move(dane_ctx));
  w->Start();
  return std::unique_ptr<DeliveryWorker>(std::move(w));
}

}  // namespace mx::delivery
