// server.cc — Asio coroutine driver for Session: accept, read lines, write
// replies, enforce timeouts, await the queue's commit.
#include "mx/ingress/server.h"

#include <boost/asio.hpp>

#include <atomic>
#include <condition_variable>
#include <thread>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/ingress/probe.h"
#include "mx/ingress/session.h"

namespace mx::ingress {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;

constexpr size_t kReadChunk = 16 * 1024;
constexpr size_t kMaxDataLine = 64 * 1024;  // longer DATA lines are passed on in fragments

// Counts enqueues whose callback has not run yet, so Stop() can wait for them
// before the io_context they post into goes away.
class InFlight {
 public:
  void Add() {
    std::lock_guard lock(mu_);
    ++n_;
  }
  void Done() {
    std::lock_guard lock(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  void Wait(std::chrono::milliseconds limit) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, limit, [&] { return n_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t n_ = 0;
};

// Awaitable wrapper around the callback-based EnqueueBackend.
template <typename Token>
auto AsyncEnqueue(EnqueueBackend& backend, InFlight& in_flight, v1::NewMessage message, Token&& token) {
  return asio::async_initiate<Token, void(Status)>(
      [&backend, &in_flight](auto handler, v1::NewMessage m) {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        in_flight.Add();
        backend.Enqueue(std::move(m), [h, ex, &in_flight](Status st) {
          asio::post(ex, [h, st = std::move(st)]() mutable { (*h)(std::move(st)); });
          in_flight.Done();
        });
      },
      token, std::move(message));
}

// Forwards session events to the probe and counts mailstats rejections.
class Observer final : public SessionObserver {
 public:
  void OnCommand(std::string_view verb) override { Probe::Get().OnCommand(verb); }
  void OnReject(RejectReason reason, int code) override {
    Probe::Get().OnReject(reason, code);
    if (reason == RejectReason::kSize || reason == RejectReason::kRelay || reason == RejectReason::kBareLf ||
        reason == RejectReason::kTooManyRecipients) {
      rejected.fetch_add(1, std::memory_order_relaxed);
    }
  }
  std::atomic<uint64_t> rejected{0};
};

struct Connection {
  explicit Connection(tcp::socket s) : socket(std::move(s)), timer(socket.get_executor()) {
    timer.expires_at(asio::steady_timer::time_point::max());  // armed per read/write
  }
  tcp::socket socket;
  asio::steady_timer timer;
  bool timed_out = false;
};

class Server final : public IngressServer {
 public:
  Server(const Config& config, std::shared_ptr<EnqueueBackend> backend, const Clock& clock)
      : config_(config.ingress),
        backend_(std::move(backend)),
        clock_(clock),
        qids_(clock, RandomQidTag()),
        acceptor_(io_) {
    session_config_.hostname = config.ingress.hostname;
    session_config_.greeting = config.ingress.greeting;
    session_config_.max_message_size = config.ingress.max_message_size;
    session_config_.max_recipients = config.ingress.max_recipients_per_message;
    session_config_.max_errors = config.ingress.max_errors;
    session_config_.node_name = config.node_name;
    session_config_.mynetworks = *CidrList::Parse(config.ingress.mynetworks);  // validated by ParseConfig
    for (const auto& d : config.ingress.relay_domains) session_config_.relay_domains.push_back(ToLower(d));
  }

  ~Server() override { Stop(); }

  Status Listen() {
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
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { io_.run(); });
    stats_thread_ = std::thread([this] { StatsLoop(); });
    log::Info("ingress listening for SMTP on " + config_.listen);
    return Status::Ok();
  }

  void Stop() override {
    if (stopped_.exchange(true)) return;
    asio::post(io_, [this] {
      boost::system::error_code ec;
      acceptor_.close(ec);
    });
    // Enqueues in flight end within their deadline; their callbacks post into io_.
    enqueues_.Wait(std::chrono::duration_cast<std::chrono::milliseconds>(config_.enqueue_timeout) +
                   std::chrono::seconds(1));
    io_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
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
      asio::co_spawn(strand, Watchdog(conn), asio::detached);
      asio::co_spawn(strand, Serve(conn), asio::detached);
    }
  }

  // Cancels the connection's I/O when its deadline passes.
  static awaitable<void> Watchdog(std::shared_ptr<Connection> conn) {
    while (conn->socket.is_open()) {
      boost::system::error_code ec;
      co_await conn->timer.async_wait(asio::redirect_error(use_awaitable, ec));
      if (conn->timer.expiry() <= asio::steady_timer::clock_type::now()) {
        conn->timed_out = true;
        conn->socket.cancel(ec);
        co_return;
      }
    }
  }

  awaitable<void> Write(Connection& conn, Session& s) {
    if (s.output().empty()) co_return;
    conn.timer.expires_after(config_.command_timeout);
    boost::system::error_code ec;
    co_await asio::async_write(conn.socket, asio::buffer(s.output()), asio::redirect_error(use_awaitable, ec));
    s.output().clear();
  }

  awaitable<void> Serve(std::shared_ptr<Connection> conn) {
    Probe::Get().SessionOpened();
    ClientInfo client;
    boost::system::error_code ec;
    auto remote = conn->socket.remote_endpoint(ec);
    client.addr = ec ? "unknown" : remote.address().to_string();
    client.name = "unknown";
    Session s(session_config_, client, clock_, qids_, &observer_);
    s.Start();
    std::string buf;
    bool open = true;
    while (open) {
      size_t pos = 0;
      for (size_t nl; open && (nl = buf.find('\n', pos)) != std::string::npos;) {
        std::string_view line(buf.data() + pos, nl + 1 - pos);
        pos = nl + 1;
        Session::Step step = s.OnLine(line);
        if (step == Session::Step::kEnqueue) {
          conn->timer.expires_at(asio::steady_timer::time_point::max());
          auto start = std::chrono::steady_clock::now();
          v1::NewMessage m = s.TakeMessage();
          uint64_t size = m.body().size();
          Status st = co_await AsyncEnqueue(*backend_, enqueues_, std::move(m), use_awaitable);
          if (st.ok()) {
            Probe::Get().Accepted(size,
                                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
          }
          step = s.OnEnqueued(st);
        }
        if (step == Session::Step::kClose) open = false;
      }
      buf.erase(0, pos);
      if (!open) break;
      size_t limit = s.in_data() ? kMaxDataLine : config_.max_line_length;
      if (buf.size() > limit) {
        size_t n = buf.size();
        if (buf.back() == '\r') --n;  // keep a CR that may start the CRLF
        if (s.OnLine(std::string_view(buf.data(), n), /*partial=*/true) == Session::Step::kClose) break;
        buf.erase(0, n);
      }
      co_await Write(*conn, s);
      if (conn->timed_out) break;
      conn->timer.expires_after(s.in_data() ? config_.data_timeout : config_.command_timeout);
      size_t old = buf.size();
      buf.resize(old + kReadChunk);
      size_t n = co_await conn->socket.async_read_some(asio::buffer(buf.data() + old, kReadChunk),
                                                       asio::redirect_error(use_awaitable, ec));
      buf.resize(old + n);
      if (ec) {
        if (conn->timed_out) {
          conn->timed_out = false;
          s.OnTimeout();
          log::Info("timeout after " + std::string(s.in_data() ? "DATA" : "command") + " from " + client.name + " [" +
                    client.addr + "]");
        } else if (ec != asio::error::eof) {
          log::Debug("read from [" + client.addr + "]: " + ec.message());
        } else if (s.in_data()) {
          log::Info("lost input channel from " + client.name + " [" + client.addr + "] during DATA");
        }
        break;
      }
    }
    co_await Write(*conn, s);
    conn->socket.shutdown(tcp::socket::shutdown_both, ec);
    conn->socket.close(ec);
    conn->timer.cancel();
    Probe::Get().SessionClosed();
  }

  void StatsLoop() {
    std::unique_lock lock(stats_mu_);
    while (!stopped_) {
      stats_cv_.wait_for(lock, std::chrono::seconds(1));
      uint64_t n = observer_.rejected.exchange(0);
      if (n == 0) continue;
      v1::MailerStats d;
      d.set_mailer("esmtp");
      d.set_msgsrej(n);
      backend_->RecordStats(d);
    }
  }

  IngressConfig config_;
  SessionConfig session_config_;
  std::shared_ptr<EnqueueBackend> backend_;
  const Clock& clock_;
  QidGenerator qids_;
  Observer observer_;
  InFlight enqueues_;
  asio::io_context io_;
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
  if (auto st = server->Listen(); !st.ok()) return st;
  return std::unique_ptr<IngressServer>(std::move(server));
}

}  // namespace mx::ingress
