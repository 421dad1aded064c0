// server.cc — Asio coroutine driver for Session: accept (connection limits,
// load shedding), read lines, write replies, enforce timeouts, STARTTLS, AUTH
// verification off the I/O threads, await the queue's commit.
//
// GCC 12 mishandles temporaries with destructors inside a co_await
// full-expression (they can be destroyed twice): every awaitable that takes
// arguments is built as a named local first and then awaited.
#include "mx/ingress/server.h"
#include "mx/common/thread_name.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <cstdio>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "auth_throttle.h"
#include "inject.h"
#include "mx/common/address.h"
#include "mx/common/dns.h"
#include "mx/common/grpc_server.h"
#include "mx/common/in_flight.h"
#include "mx/common/log.h"
#include "mx/ingress/client_lookup.h"
#include "probe.h"
#include "session.h"

namespace mx::ingress {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;

constexpr size_t kReadChunk = size_t{16} * 1024;
constexpr size_t kMaxDataLine = size_t{64} * 1024;  // longer DATA lines are passed on in fragments

// Enqueues whose callback has not run yet: Stop() waits for them before the
// io_context they post into goes away.
using InFlight = InFlightCalls;

// Awaitable wrapper around the callback-based EnqueueBackend.
template <typename Token>
auto AsyncEnqueue(EnqueueBackend& backend, InFlight& in_flight, v1::NewMessage message, Token&& token) {
  return asio::async_initiate<Token, void(Status)>(
      [&backend, &in_flight](auto handler, v1::NewMessage&& m) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        in_flight.Begin();
        backend.Enqueue(std::move(m), [h, ex, &in_flight](Status st) {
          asio::post(ex, [h, st = std::move(st)]() mutable { (*h)(std::move(st)); });
          in_flight.End();
        });
      },
      token, std::move(message));
}

// Awaitable wrapper around EnqueueBackend::RunQueue (ETRN). The domain is an
// initiation argument, not a lambda capture, so it lives in the operation.
template <typename Token>
auto AsyncRunQueue(EnqueueBackend& backend, InFlight& in_flight, std::string domain, Token&& token) {
  return asio::async_initiate<Token, void(Result<uint64_t>)>(
      [&backend, &in_flight](auto handler, const std::string& d) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        in_flight.Begin();
        backend.RunQueue(d, [h, ex, &in_flight](Result<uint64_t> r) {
          asio::post(ex, [h, r = std::move(r)]() mutable { (*h)(std::move(r)); });
          in_flight.End();
        });
      },
      token, std::move(domain));
}

// Awaitable wrapper around ClientLookup::Lookup (reverse DNS and DNSBL).
template <typename Token>
auto AsyncClientLookup(ClientLookup& lookup, std::string ip, bool reverse, std::vector<std::string> zones,
                       Token&& token) {
  return asio::async_initiate<Token, void(ClientFacts)>(
      [&lookup](auto handler, const std::string& addr, bool rev, const std::vector<std::string>& z) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        lookup.Lookup(addr, rev, z, [h, ex](ClientFacts f) {
          asio::post(ex, [h, f = std::move(f)]() mutable { (*h)(std::move(f)); });
        });
      },
      token, std::move(ip), reverse, std::move(zones));
}

// Forwards session events to the probe and counts mailstats rejections and discards.
class Observer final : public SessionObserver {
 public:
  void OnCommand(std::string_view verb) override { Probe::Get().OnCommand(verb); }
  void OnReject(RejectReason reason, int code) override {
    Probe::Get().OnReject(reason, code);
    // mailstats msgsrej counts refused messages/recipients, not protocol errors.
    switch (reason) {
      case RejectReason::kSize:
      case RejectReason::kRelay:
      case RejectReason::kBareLf:
      case RejectReason::kTooManyRecipients:
      case RejectReason::kAccess:
      case RejectReason::kUserUnknown:
      case RejectReason::kRedirect:
      case RejectReason::kHeader:
      case RejectReason::kHops:
      case RejectReason::kSuppressed:
      case RejectReason::kDnsbl: rejected.fetch_add(1, std::memory_order_relaxed); break;
      default: break;
    }
  }
  void OnAuth(bool ok) override { Probe::Get().OnAuth(ok); }
  void OnDkim(std::string_view algorithm, bool ok) override { Probe::Get().OnDkim(algorithm, ok); }
  void OnDiscard() override {
    Probe::Get().OnDiscard();
    discarded.fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> discarded{0};
};

// Admission per client IP: open connections and new connections per minute
// (FEATURE(conncontrol) / FEATURE(ratecontrol)); plus the total.
class ConnectionLimiter {
 public:
  enum class Verdict { kOk, kTotal, kPerIp, kRate };

  // exempt: mynetworks clients are not held to the per-IP limits.
  Verdict Admit(const std::string& ip, const IngressConfig& cfg, bool exempt, int64_t now_s) {
    std::lock_guard lock(mu_);
    if (cfg.max_connections && total_ >= cfg.max_connections) return Verdict::kTotal;
    if (exempt) {
      ++total_;
      ++clients_[ip].active;
      return Verdict::kOk;
    }
    Client& c = clients_[ip];
    if (now_s / 60 != c.minute) {
      c.previous = now_s / 60 == c.minute + 1 ? c.current : 0;
      c.current = 0;
      c.minute = now_s / 60;
    }
    if (cfg.max_connections_per_ip && c.active >= cfg.max_connections_per_ip) return Verdict::kPerIp;
    if (cfg.connection_rate_per_ip) {
      // Sliding one-minute window: this minute plus the unexpired share of the last.
      double elapsed = static_cast<double>(now_s % 60) / 60.0;
      double rate = c.current + c.previous * (1.0 - elapsed);
      if (rate >= cfg.connection_rate_per_ip) return Verdict::kRate;
    }
    ++c.current;
    ++c.active;
    ++total_;
    if (++admitted_ % 1024 == 0) Sweep(now_s);
    return Verdict::kOk;
  }

  void Release(const std::string& ip) {
    std::lock_guard lock(mu_);
    --total_;
    if (auto it = clients_.find(ip); it != clients_.end() && it->second.active > 0) --it->second.active;
  }

  uint32_t Total() const {
    std::lock_guard lock(mu_);
    return total_;
  }

 private:
  struct Client {
    uint32_t active = 0;
    int64_t minute = 0;
    uint32_t current = 0, previous = 0;
  };
  // Forgets idle clients whose counts no longer matter, bounding memory.
  void Sweep(int64_t now_s) {
    std::erase_if(clients_, [&](const auto& kv) { return kv.second.active == 0 && kv.second.minute + 1 < now_s / 60; });
  }

  mutable std::mutex mu_;
  uint32_t total_ = 0;
  uint64_t admitted_ = 0;
  std::unordered_map<std::string, Client> clients_;
};

// The 1-minute load average, read at most once a second from /proc/loadavg
// (or ingress.loadavg_file: in containers, e.g. an lxcfs view).
class LoadMonitor {
 public:
  double Get(const std::string& file, int64_t now_us) {
    std::lock_guard lock(mu_);  // a connection waits for the sample in progress, never sees a stale 0
    if (now_us - sampled_us_ > 1'000'000) {
      sampled_us_ = now_us;
      if (FILE* f = fopen(file.c_str(), "r")) {
        double la = 0;
        if (fscanf(f, "%lf", &la) == 1) load_ = la;
        fclose(f);
      }
    }
    return load_;
  }

 private:
  std::mutex mu_;
  int64_t sampled_us_ = 0;
  double load_ = 0;
};

using TlsStream = asio::ssl::stream<tcp::socket&>;

struct Connection {
  using TimePoint = asio::steady_timer::time_point;
  explicit Connection(tcp::socket s) : socket(std::move(s)), timer(socket.get_executor()) {
    timer.expires_at(TimePoint::max());
  }
  // The deadline of the I/O under way, watched by Server::Watchdog. Moving it
  // later only writes it down (the watchdog re-arms when its timer fires), so
  // the reads and writes of a session cost no timer operations; moving it
  // before the armed expiry wakes the watchdog to re-arm.
  void SetDeadline(TimePoint d) {
    deadline = d;
    if (d < timer.expiry()) timer.cancel();
  }
  template <typename Duration>
  void SetTimeout(Duration t) {
    SetDeadline(asio::steady_timer::clock_type::now() + t);
  }
  tcp::socket socket;
  std::shared_ptr<asio::ssl::context> tls_context;  // keeps the context alive while tls is
  std::unique_ptr<TlsStream> tls;                   // after STARTTLS
  asio::steady_timer timer;
  TimePoint deadline = TimePoint::max();
  bool timed_out = false;
};

// Builds the STARTTLS context from the configured certificate and key.
Result<std::shared_ptr<asio::ssl::context>> MakeTlsContext(const IngressConfig& cfg, const std::string& dir) {
  if (cfg.tls_cert_file.empty()) return std::shared_ptr<asio::ssl::context>();
  auto path = [&](const std::string& p) { return p.front() == '/' ? p : dir + "/" + p; };
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1 |
                   asio::ssl::context::single_dh_use);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(path(cfg.tls_cert_file), ec);
  if (ec)
    return Status(Code::kInvalidArgument, "ingress.tls_cert_file: " + path(cfg.tls_cert_file) + ": " + ec.message());
  ctx->use_private_key_file(path(cfg.tls_key_file), asio::ssl::context::pem, ec);
  if (ec)
    return Status(Code::kInvalidArgument, "ingress.tls_key_file: " + path(cfg.tls_key_file) + ": " + ec.message());
  return ctx;
}

class Server final : public IngressServer {
 public:
  Server(const Config& config, std::shared_ptr<EnqueueBackend> backend, const Clock& clock)
      : config_(config.ingress),
        node_name_(config.node_name),
        backend_(std::move(backend)),
        clock_(clock),
        qids_(clock, RandomQidTag()),
        acceptor_(io_) {}

  ~Server() override { Stop(); }

  Status Listen(const Config& config) {
    if (auto st = Reload(config); !st.ok()) return st;
    auto dns = DnsChannel::Start(config.ingress.dns_servers, config.ingress.dns_timeout);
    if (!dns.ok()) return Status(dns.status().code(), "ingress.dns_servers: " + dns.status().message());
    lookup_ = std::make_unique<ClientLookup>(std::move(dns).value(), clock_);
    auto hp = ParseHostPort(config_.listen);
    if (!hp.ok()) return hp.status();
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(hp->host, ec);
    if (ec) return Status(Code::kInvalidArgument, "ingress.listen: '" + hp->host + "' is not an IP address");
    tcp::endpoint ep(addr, hp->port);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Status(Code::kUnavailable, "cannot listen for SMTP on " + config_.listen + ": " + ec.message());
    port_ = acceptor_.local_endpoint(ec).port();
    asio::co_spawn(io_, AcceptLoop(), asio::detached);
    unsigned n = config_.threads ? config_.threads : std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < n; ++i) {
      threads_.emplace_back([this, i] {
        SetThreadName("mx-smtp-" + std::to_string(i));
        io_.run();
      });
    }
    stats_thread_ = std::thread([this] {
      SetThreadName("mx-smtp-stats");
      StatsLoop();
    });
    if (config_.check_suppressions) {
      suppressions_ =
          std::make_unique<SuppressionFollower>(config.ingress.queue, config.queue.shards, std::chrono::seconds(2));
    }
    if (!config_.inject_listen.empty()) {
      if (auto st = StartInject(config); !st.ok()) return st;
    }
    log::Info("ingress listening for SMTP on " + config_.listen);
    return Status::Ok();
  }

  // The gRPC injection API on ingress.inject_listen (ingress/inject.h).
  Status StartInject(const Config& config) {
    const std::string& file = config_.inject_tokens_file;
    const std::string path = file.front() == '/' ? file : config.config_dir + "/" + file;
    std::ifstream in(path);
    if (!in) return Status(Code::kInvalidArgument, "ingress.inject_tokens_file: cannot read " + path);
    std::stringstream text;
    text << in.rdbuf();
    auto tokens = ParseInjectTokens(text.str(), path);
    if (!tokens.ok()) return Status(Code::kInvalidArgument, "ingress.inject_tokens_file: " + tokens.status().message());
    InjectContext c;
    c.policy = [this] { return policy_.load(); };
    c.backend = backend_;
    c.suppressions = suppressions_ ? &suppressions_->set() : nullptr;
    c.clock = &clock_;
    c.qids = &qids_;
    c.observer = &observer_;
    c.node_name = node_name_;
    c.hostname = config_.hostname;
    c.tokens = std::move(tokens).value();
    c.enqueue_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(config_.enqueue_timeout);
    inject_service_ = MakeInjectService(std::move(c));
    auto server = StartGrpcServer(config_.inject_listen, {inject_service_.get()});
    if (!server.ok()) return Status(server.status().code(), "ingress.inject_listen: " + server.status().message());
    inject_server_ = std::move(server).value();
    log::Info("ingress serving the Inject API on " + config_.inject_listen);
    return Status::Ok();
  }

  Status Reload(const Config& config) override {
    auto policy = Policy::Load(config.ingress, config.config_dir);
    auto tls = policy.ok() ? MakeTlsContext(config.ingress, config.config_dir)
                           : Result<std::shared_ptr<asio::ssl::context>>(policy.status());
    if (!policy.ok() || !tls.ok()) {
      Probe::Get().PolicyReload(false);
      Status st = policy.ok() ? tls.status() : policy.status();
      if (policy_.load()) log::Error("policy reload refused, previous policy stays in force: " + st.message());
      return st;
    }
    if (policy_.load() && (config.ingress.listen != config_.listen || config.ingress.threads != config_.threads)) {
      log::Warn("policy reload: ingress.listen and ingress.threads take effect at restart");
    }
    policy_.store(*policy);
    tls_.store(*tls);
    Probe::Get().PolicyReload(true);
    Probe::Get().PolicyVersion((*policy)->version());
    log::Info("policy loaded: " + (*policy)->Describe() + ((*tls) ? " starttls=on" : " starttls=off"));
    return Status::Ok();
  }

  Status ApplyBundle(const v1::PolicyBundle& bundle) override {
    auto policy = Policy::FromBundle(bundle, &config_);
    if (!policy.ok()) {
      Probe::Get().PolicyReload(false);
      log::Error("pushed policy " + bundle.version() + " refused, " +
                 (policy_.load() ? policy_.load()->version() : std::string("none")) +
                 " stays in force: " + policy.status().message());
      return policy.status();
    }
    policy_.store(*policy);
    Probe::Get().PolicyReload(true);
    Probe::Get().PolicyVersion((*policy)->version());
    log::Info("pushed policy loaded: " + (*policy)->Describe());
    return Status::Ok();
  }
  std::string PolicyVersion() const override {
    auto p = policy_.load();
    return p ? p->version() : "";
  }

  void SetDraining(bool draining) override {
    if (draining_.exchange(draining) != draining) {
      log::Info(draining ? "ingress draining: new connections get 421" : "ingress accepting connections again");
    }
  }
  uint64_t Sessions() const override { return limiter_.Total(); }

  void Stop() override {
    if (stopped_.exchange(true)) return;
    if (inject_server_) inject_server_->Shutdown(std::chrono::system_clock::now() + config_.enqueue_timeout);
    asio::post(io_, [this] {
      boost::system::error_code ec;
      acceptor_.close(ec);
    });
    // Enqueues in flight end within their deadline; their callbacks post into io_.
    enqueues_.WaitIdle(std::chrono::duration_cast<std::chrono::milliseconds>(config_.enqueue_timeout) +
                       std::chrono::seconds(1));
    io_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    auth_pool_.join();
    {
      std::lock_guard lock(stats_mu_);
      stats_cv_.notify_all();
    }
    if (stats_thread_.joinable()) stats_thread_.join();
  }

  uint16_t port() const override { return port_; }

 private:
  awaitable<void> AcceptLoop() {
    for (;;) {
      boost::system::error_code ec;
      auto strand = asio::make_strand(io_);
      tcp::socket socket = co_await acceptor_.async_accept(strand, asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
        log::Warn("accept failed: " + ec.message());
        continue;
      }
      auto conn = std::make_shared<Connection>(std::move(socket));
      asio::co_spawn(strand, Admit(conn), asio::detached);
    }
  }

  // Connection limits and load shedding, then the session. A refused client
  // gets a 421 at once and the connection is closed (never a silent hang).
  awaitable<void> Admit(std::shared_ptr<Connection> conn) {
    boost::system::error_code ec;
    auto remote = conn->socket.remote_endpoint(ec);
    std::string ip = ec ? "unknown" : remote.address().to_string();
    if (remote.address().is_v6() && remote.address().to_v6().is_v4_mapped()) {
      ip = asio::ip::make_address_v4(asio::ip::v4_mapped, remote.address().to_v6()).to_string();
    }
    auto policy = policy_.load();
    const IngressConfig& cfg = policy->settings();
    const int64_t now_us = clock_.NowUnixMicros();
    const double load = cfg.refuse_la > 0 || cfg.queue_la > 0 ? load_.Get(cfg.loadavg_file, now_us) : 0;
    std::string refusal;
    RejectReason reason = RejectReason::kConnLimit;
    // Backpressure is a circuit breaker: while open, one trial session a
    // second still gets in, and its successful Enqueue closes the breaker.
    int64_t last_trial = backpressure_trial_us_.load(std::memory_order_relaxed);
    if (draining_.load(std::memory_order_relaxed)) {
      refusal = "421 4.3.2 " + cfg.hostname + " Service not available, node draining; try another";
      reason = RejectReason::kDrain;
      log::Info("refused connection from [" + ip + "]: draining");
    } else if (backpressure_until_us_.load(std::memory_order_relaxed) > now_us &&
               (now_us - last_trial < 1'000'000 ||
                !backpressure_trial_us_.compare_exchange_strong(last_trial, now_us, std::memory_order_relaxed))) {
      refusal = "421 4.3.2 " + cfg.hostname + " Service temporarily unavailable, try again later";
      reason = RejectReason::kQueue;
      log::Info("refused connection from [" + ip + "]: queue backpressure");
    } else if (cfg.refuse_la > 0 && load >= cfg.refuse_la) {
      refusal = "421 4.3.2 " + cfg.hostname + " Too busy, try again later";
      reason = RejectReason::kLoad;
      log::Info("refused connection from [" + ip + "]: load average " + std::to_string(load) + " >= RefuseLA " +
                std::to_string(cfg.refuse_la));
    } else {
      switch (limiter_.Admit(ip, cfg, policy->InMynetworks(ip), now_us / 1'000'000)) {
        case ConnectionLimiter::Verdict::kOk: break;
        case ConnectionLimiter::Verdict::kTotal:
          refusal = "421 4.3.2 " + cfg.hostname + " Too many connections, try again later";
          log::Info("refused connection from [" + ip + "]: max_connections " + std::to_string(cfg.max_connections));
          break;
        case ConnectionLimiter::Verdict::kPerIp:
          refusal = "421 4.7.0 " + cfg.hostname + " Error: too many connections from " + ip;
          log::Info("refused connection from [" + ip + "]: max_connections_per_ip " +
                    std::to_string(cfg.max_connections_per_ip));
          break;
        case ConnectionLimiter::Verdict::kRate:
          refusal = "421 4.7.0 " + cfg.hostname + " Error: too many connections from " + ip;
          reason = RejectReason::kRate;
          log::Info("refused connection from [" + ip + "]: connection_rate_per_ip " +
                    std::to_string(cfg.connection_rate_per_ip) + "/min");
          break;
      }
    }
    if (!refusal.empty()) {
      Probe::Get().OnReject(reason, 421);
      refusal += "\r\n";
      conn->SetTimeout(std::chrono::seconds(10));
      co_spawn(conn->socket.get_executor(), Watchdog(conn), asio::detached);
      co_await asio::async_write(conn->socket, asio::buffer(refusal), asio::redirect_error(use_awaitable, ec));
      conn->socket.shutdown(tcp::socket::shutdown_both, ec);
      conn->socket.close(ec);
      conn->timer.cancel();
      co_return;
    }
    SessionOptions opts;
    opts.node_name = node_name_;
    opts.tls_available = tls_.load() != nullptr;
    opts.auth_available = policy->auth_users() != nullptr;
    opts.queue_only = cfg.queue_la > 0 && load >= cfg.queue_la;
    opts.storage_low = storage_low_until_us_.load(std::memory_order_relaxed) > now_us;
    if (suppressions_) opts.suppressions = &suppressions_->set();
    opts.draining = &draining_;
    asio::co_spawn(conn->socket.get_executor(), Watchdog(conn), asio::detached);
    auto serve = Serve(conn, std::move(policy), std::move(opts), ip);
    co_await std::move(serve);
    limiter_.Release(ip);
  }

  // Cancels the connection's I/O when its deadline passes. The timer is armed
  // at the deadline seen when it was last armed; a later deadline is found
  // when it fires, an earlier one cancels it (Connection::SetDeadline).
  static awaitable<void> Watchdog(std::shared_ptr<Connection> conn) {
    while (conn->socket.is_open()) {
      boost::system::error_code ec;
      conn->timer.expires_at(conn->deadline);
      co_await conn->timer.async_wait(asio::redirect_error(use_awaitable, ec));
      if (!conn->socket.is_open()) co_return;
      if (conn->deadline <= asio::steady_timer::clock_type::now()) {
        conn->timed_out = true;
        conn->socket.cancel(ec);
        co_return;
      }
    }
  }

  awaitable<void> Write(Connection& conn, Session& s) {
    if (s.output().empty()) co_return;
    conn.SetTimeout(config_.command_timeout);
    boost::system::error_code ec;
    if (conn.tls) {
      co_await asio::async_write(*conn.tls, asio::buffer(s.output()), asio::redirect_error(use_awaitable, ec));
    } else {
      co_await asio::async_write(conn.socket, asio::buffer(s.output()), asio::redirect_error(use_awaitable, ec));
    }
    s.output().clear();
  }

  // Carries out what the session asked for; returns the step after it.
  awaitable<Session::Step> Perform(Connection& conn, Session& s, Session::Step step, const Policy& policy) {
    switch (step) {
      case Session::Step::kEnqueue: {
        conn.SetDeadline(Connection::TimePoint::max());
        auto start = std::chrono::steady_clock::now();
        v1::NewMessage m = s.TakeMessage();
        uint64_t size = m.body().size();
        auto enqueue = AsyncEnqueue(*backend_, enqueues_, std::move(m), use_awaitable);
        Status st = co_await std::move(enqueue);
        const auto took = std::chrono::steady_clock::now() - start;
        const IngressConfig& cfg = policy.settings();
        // Queue backpressure: a slow or failing queue sheds new connections for a while.
        if (cfg.backpressure_latency.count() > 0 &&
            ((!st.ok() && st.code() != Code::kResourceExhausted && st.code() != Code::kAlreadyExists) ||
             took > cfg.backpressure_latency)) {
          const int64_t until = clock_.NowUnixMicros() +
                                std::chrono::duration_cast<std::chrono::microseconds>(cfg.backpressure_hold).count();
          if (backpressure_until_us_.exchange(until, std::memory_order_relaxed) < clock_.NowUnixMicros()) {
            log::Warn("queue backpressure: Enqueue " +
                      (st.ok()
                           ? "took " +
                                 std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()) +
                                 " ms"
                           : "failed: " + st.ToString()) +
                      "; refusing new connections for a while");
          }
        }
        if (st.ok()) {
          Probe::Get().Accepted(size, std::chrono::duration<double>(took).count());
          storage_low_until_us_.store(0, std::memory_order_relaxed);
          if (took <= cfg.backpressure_latency) backpressure_until_us_.store(0, std::memory_order_relaxed);
        } else if (st.code() == Code::kResourceExhausted) {
          // MinFreeBlocks: refuse new transactions at MAIL for a while.
          storage_low_until_us_.store(clock_.NowUnixMicros() + 10'000'000, std::memory_order_relaxed);
        }
        co_return s.OnEnqueued(st);
      }
      case Session::Step::kAuthenticate: {
        conn.SetTimeout(config_.command_timeout);
        const IngressConfig& cfg = policy.settings();
        const AuthThrottle::Limits limits{cfg.auth_failures_per_ip, cfg.auth_failures_per_user,
                                          cfg.auth_failure_window};
        const std::string ip = s.client_addr(), user = s.auth_user();
        switch (auth_throttle_.Check(ip, user, limits, clock_.NowUnixMicros())) {
          case AuthThrottle::Verdict::kIpBlocked: co_return s.OnAuthThrottled(/*by_address=*/true);
          case AuthThrottle::Verdict::kUserBlocked: co_return s.OnAuthThrottled(/*by_address=*/false);
          case AuthThrottle::Verdict::kOk: break;
        }
        const AuthUsers* users = policy.auth_users();
        // crypt(3) is slow by design: verify on the auth pool, not an I/O thread.
        auto verify = asio::co_spawn(auth_pool_, VerifyPassword(users, user, s.auth_password()), use_awaitable);
        bool ok = co_await std::move(verify);
        if (ok) {
          auth_throttle_.Succeeded(user);
        } else {
          auth_throttle_.Failed(ip, user, limits, clock_.NowUnixMicros());
        }
        co_return s.OnAuthResult(ok);
      }
      case Session::Step::kEtrn: {
        auto run = AsyncRunQueue(*backend_, enqueues_, s.etrn_domain(), use_awaitable);
        Result<uint64_t> r = co_await std::move(run);
        co_return s.OnEtrnResult(r);
      }
      case Session::Step::kDiscard: co_return Session::Step::kContinue;
      default: co_return step;
    }
  }

  // A coroutine function, not a capturing lambda: its arguments live in the frame.
  static awaitable<bool> VerifyPassword(const AuthUsers* users, std::string user, std::string password) {
    co_return users && users->Verify(user, password);
  }

  // RFC 3207: the 220 is out; anything the client pipelined after STARTTLS is
  // dropped (CVE-2011-0411), then the handshake runs under the command timeout.
  awaitable<bool> StartTls(Connection& conn, const std::string& ip) {
    auto ctx = tls_.load();
    if (!ctx) co_return false;
    conn.tls_context = ctx;
    conn.tls = std::make_unique<TlsStream>(conn.socket, *ctx);
    conn.SetTimeout(config_.command_timeout);
    boost::system::error_code ec;
    co_await conn.tls->async_handshake(asio::ssl::stream_base::server, asio::redirect_error(use_awaitable, ec));
    Probe::Get().TlsHandshake(!ec);
    if (ec) {
      log::Info("STARTTLS handshake with [" + ip + "] failed: " + ec.message());
      co_return false;
    }
    const SSL* ssl = conn.tls->native_handle();
    log::Debug("STARTTLS with [" + ip + "]: " + SSL_get_version(ssl) + " " + SSL_get_cipher_name(ssl));
    co_return true;
  }

  awaitable<void> Serve(std::shared_ptr<Connection> conn, std::shared_ptr<const Policy> policy, SessionOptions opts,
                        std::string ip) {
    Probe::Get().SessionOpened();
    ClientInfo client;
    boost::system::error_code ec;
    client.addr = ip;
    client.name = "unknown";
    const Policy& pol = *policy;
    Verdict connect = pol.CheckConnect(client);
    // DNS: the client's name (for logs, Received: and Connect: host keys) and,
    // unless access or mynetworks already decided, its DNSBL listings.
    const bool reverse = pol.settings().reverse_dns;
    std::vector<std::string> zones = pol.DnsblZonesFor(connect);
    if (reverse || !zones.empty()) {
      auto lookup = AsyncClientLookup(*lookup_, ip, reverse, std::move(zones), use_awaitable);
      ClientFacts facts = co_await std::move(lookup);
      for (const auto& a : facts.dnsbl) Probe::Get().DnsblAnswer(a.zone, a.kind);
      connect = pol.FinishConnect(&client, connect, facts, reverse);
    }
    Session s(std::move(policy), std::move(opts), client, clock_, qids_, &observer_);
    s.Start(connect);
    std::string buf;
    // Reads land here (never zero-filled) and only what arrived is appended to buf.
    auto chunk = std::make_unique_for_overwrite<char[]>(kReadChunk);
    bool open = true;
    while (open) {
      size_t pos = 0;
      bool tls_restart = false;
      for (size_t nl; open && (nl = buf.find('\n', pos)) != std::string::npos;) {
        std::string_view line(buf.data() + pos, nl + 1 - pos);
        pos = nl + 1;
        Session::Step step = s.OnLine(line);
        while (step != Session::Step::kContinue && step != Session::Step::kClose && step != Session::Step::kStartTls) {
          auto perform = Perform(*conn, s, step, pol);
          step = co_await std::move(perform);
        }
        if (step == Session::Step::kStartTls) {
          co_await Write(*conn, s);
          buf.clear();  // never let plaintext pipelined before TLS count after it
          if (conn->timed_out || !co_await StartTls(*conn, ip)) {
            open = false;
          } else {
            s.OnTlsStarted();
            tls_restart = true;
          }
          break;
        }
        if (step == Session::Step::kClose) open = false;
      }
      // A line (a record, as Postfix's smtpd_per_record_deadline has it) must
      // arrive whole within the timeout: bytes that do not complete one do not
      // extend the deadline, so a client trickling a byte at a time
      // (slowloris) is cut off like an idle one.
      bool progress = pos > 0 || tls_restart;
      if (!tls_restart) buf.erase(0, pos);
      if (!open) break;
      size_t limit = s.in_data() ? kMaxDataLine : config_.max_line_length;
      if (buf.size() > limit) {
        size_t n = buf.size();
        if (buf.back() == '\r') --n;  // keep a CR that may start the CRLF
        if (s.OnLine(std::string_view(buf.data(), n), /*partial=*/true) == Session::Step::kClose) break;
        buf.erase(0, n);
        progress = true;
      }
      co_await Write(*conn, s);
      if (conn->timed_out) break;
      if (progress || buf.empty()) conn->SetTimeout(s.in_data() ? config_.data_timeout : config_.command_timeout);
      size_t n = 0;
      if (conn->tls) {
        n = co_await conn->tls->async_read_some(asio::buffer(chunk.get(), kReadChunk),
                                                asio::redirect_error(use_awaitable, ec));
      } else {
        n = co_await conn->socket.async_read_some(asio::buffer(chunk.get(), kReadChunk),
                                                  asio::redirect_error(use_awaitable, ec));
      }
      buf.append(chunk.get(), n);
      if (ec) {
        if (conn->timed_out) {
          conn->timed_out = false;
          const bool in_data = s.in_data();  // OnTimeout closes the session
          s.OnTimeout();
          log::Mail(s.log_id(), "timeout after " + std::string(in_data ? "DATA" : "command") + " from " + client.name +
                                    " [" + client.addr + "]");
        } else if (ec != asio::error::eof && ec != asio::ssl::error::stream_truncated) {
          log::Debug("read from [" + client.addr + "]: " + ec.message());
        } else if (s.in_data()) {
          log::Mail(s.log_id(), "lost input channel from " + client.name + " [" + client.addr + "] during DATA");
        }
        break;
      }
    }
    co_await Write(*conn, s);
    if (conn->tls && !conn->timed_out) {
      conn->SetTimeout(std::chrono::seconds(5));
      co_await conn->tls->async_shutdown(asio::redirect_error(use_awaitable, ec));
    }
    conn->socket.shutdown(tcp::socket::shutdown_both, ec);
    conn->socket.close(ec);
    conn->timer.cancel();
    Probe::Get().SessionClosed();
  }

  void StatsLoop() {
    std::unique_lock lock(stats_mu_);
    while (!stopped_) {
      stats_cv_.wait_for(lock, std::chrono::seconds(1));
      uint64_t rej = observer_.rejected.exchange(0), dis = observer_.discarded.exchange(0);
      if (rej == 0 && dis == 0) continue;
      v1::MailerStats d;
      d.set_mailer("esmtp");
      d.set_msgsrej(rej);
      d.set_msgsdis(dis);
      backend_->RecordStats(d);
    }
  }

  IngressConfig config_;  // listen, threads and timeouts: fixed at start
  std::string node_name_;
  std::atomic<std::shared_ptr<const Policy>> policy_;
  std::atomic<std::shared_ptr<asio::ssl::context>> tls_;
  std::shared_ptr<EnqueueBackend> backend_;
  std::unique_ptr<ClientLookup> lookup_;
  std::unique_ptr<SuppressionFollower> suppressions_;  // null: ingress.check_suppressions off
  std::unique_ptr<grpc::Service> inject_service_;      // null: ingress.inject_listen unset
  std::unique_ptr<grpc::Server> inject_server_;
  const Clock& clock_;
  QidGenerator qids_;
  Observer observer_;
  ConnectionLimiter limiter_;
  AuthThrottle auth_throttle_;  // failed AUTH per address and user, across sessions
  LoadMonitor load_;
  std::atomic<int64_t> storage_low_until_us_{0};
  std::atomic<int64_t> backpressure_until_us_{0};
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> backpressure_trial_us_{0};
  InFlight enqueues_;
  asio::io_context io_;
  asio::thread_pool auth_pool_{1};
  tcp::acceptor acceptor_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopped_{false};
  uint16_t port_ = 0;
  std::mutex stats_mu_;
  std::condition_variable stats_cv_;
  std::thread stats_thread_;
};

}  // namespace

Result<std::unique_ptr<IngressServer>> StartIngress(const Config& config, std::shared_ptr<EnqueueBackend> backend,
                                                    const Clock& clock) {
  auto server = std::make_unique<Server>(config, std::move(backend), clock);
  if (auto st = server->Listen(config); !st.ok()) return st;
  return std::unique_ptr<IngressServer>(std::move(server));
}

Status CheckTls(const IngressConfig& config, const std::string& config_dir) {
  auto ctx = MakeTlsContext(config, config_dir);
  return ctx.ok() ? Status::Ok() : ctx.status();
}

}  // namespace mx::ingress
