// connection_pool.cc — cached sessions, connection slots and rate turns.
#include "connection_pool.h"

#include <boost/asio.hpp>

#include "mx/common/address.h"
#include "probe.h"

namespace mx::delivery {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using SteadyClock = std::chrono::steady_clock;

SessionOpener SmtpOpener() {
  return [](asio::strand<asio::any_io_executor> strand, std::string ip, uint16_t port, const SmtpClientConfig& config,
            std::string sni, Attempt* failure) {
    return SmtpSession::Open(std::move(strand), std::move(ip), port, config, std::move(sni), failure);
  };
}

// An open session, the permit hold it occupies ("" when no limit applies) and
// where it may be reused.
struct ConnectionPool::Conn {
  std::unique_ptr<SmtpSession> session;
  std::string holder;
  std::string pool_key;
  SteadyClock::time_point idle_since;
};

// Idle sessions by site, mailer, address and TLS mode; the oldest go first
// when full. Also the wake-up point for transactions waiting for a slot.
class ConnectionPool::Cache {
 public:
  std::unique_ptr<Conn> Take(const std::string& key) {
    std::lock_guard lock(mu_);
    auto it = idle_.find(key);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    auto c = std::move(it->second.back());  // the most recently used: the least likely to have timed out
    it->second.pop_back();
    if (it->second.empty()) idle_.erase(it);
    Count(-1);
    return c;
  }
  // Keeps c; returns what must be closed to stay within capacity.
  std::vector<std::unique_ptr<Conn>> Put(std::unique_ptr<Conn> c, size_t capacity) {
    std::vector<std::unique_ptr<Conn>> evicted;
    std::lock_guard lock(mu_);
    c->idle_since = SteadyClock::now();
    idle_[c->pool_key].push_back(std::move(c));
    Count(1);
    while (count_ > capacity) evicted.push_back(PopOldest());
    return evicted;
  }
  // Idle since cutoff or longer.
  std::vector<std::unique_ptr<Conn>> IdleSince(SteadyClock::time_point cutoff) {
    std::vector<std::unique_ptr<Conn>> out;
    std::lock_guard lock(mu_);
    for (auto it = idle_.begin(); it != idle_.end();) {
      auto& q = it->second;
      while (!q.empty() && q.front()->idle_since <= cutoff) {
        out.push_back(std::move(q.front()));
        q.pop_front();
        Count(-1);
      }
      it = q.empty() ? idle_.erase(it) : std::next(it);
    }
    return out;
  }
  std::vector<std::unique_ptr<Conn>> TakeAll() { return IdleSince(SteadyClock::time_point::max()); }
  bool Peek(const std::string& key) const {
    std::lock_guard lock(mu_);
    return idle_.count(key) > 0;
  }
  size_t size() const {
    std::lock_guard lock(mu_);
    return count_;
  }
  void ClearWaiters() {
    std::lock_guard lock(mu_);
    waiters_.clear();
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
  void Count(int delta) {  // mu_ held
    count_ += delta;
    Probe::Get().CachedConnections(delta);
  }
  std::unique_ptr<Conn> PopOldest() {  // mu_ held, count_ > 0
    auto oldest = idle_.begin();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->second.front()->idle_since < oldest->second.front()->idle_since) oldest = it;
    }
    auto c = std::move(oldest->second.front());
    oldest->second.pop_front();
    if (oldest->second.empty()) idle_.erase(oldest);
    Count(-1);
    return c;
  }

  mutable std::mutex mu_;
  std::map<std::string, std::deque<std::unique_ptr<Conn>>> idle_;
  size_t count_ = 0;
  std::set<std::shared_ptr<asio::steady_timer>> waiters_;
};

namespace {

Attempt Throttled(const std::string& why) {
  Attempt a;
  a.throttled = true;
  a.error = why;
  return a;
}

// A verified session is good only for the name it was verified for.
std::string TlsMode(const SmtpClientConfig& cc, const std::string& host) {
  if (!cc.tlsa.empty()) return "d:" + ToLower(host);
  if (cc.verify) return "v:" + ToLower(host);
  switch (cc.tls) {
    case SmtpClientConfig::Tls::kNone: return "n";
    case SmtpClientConfig::Tls::kMay: return "m";
    case SmtpClientConfig::Tls::kEncrypt: return "e";
  }
  return "e";
}

}  // namespace

ConnectionPool::ConnectionPool(asio::io_context& io, PermitClient& permits, Options options, SessionOpener opener)
    : io_(io),
      permits_(permits),
      options_(std::move(options)),
      opener_(std::move(opener)),
      cache_(std::make_unique<Cache>()) {}

ConnectionPool::~ConnectionPool() = default;

size_t ConnectionPool::idle() const {
  return cache_->size();
}

std::vector<v1::PermitKey> ConnectionPool::SlotKeys(const Hop& hop) const {
  std::vector<v1::PermitKey> keys;
  if (hop.shape->max_connections > 0) {
    keys.emplace_back();
    keys.back().set_key(hop.shape->key);
    keys.back().set_limit(hop.shape->max_connections);
  }
  if (options_.single_thread_delivery) {  // one connection per MX host, cluster-wide
    keys.emplace_back();
    keys.back().set_key("host:" + ToLower(hop.host));
    keys.back().set_limit(1);
  }
  return keys;
}

awaitable<Attempt> ConnectionPool::Transact(const Hop& hop, const SmtpClientConfig& cc, const v1::LeasedMessage& m,
                                            const std::vector<ClientRcpt>& rcpts) {
  const auto deadline = SteadyClock::now() + options_.limit_wait;
  const SiteShape& shape = *hop.shape;
  const std::string pool_key =
      shape.key + "|" + hop.mailer + "|" + hop.ip + "|" + std::to_string(hop.port) + "|" + TlsMode(cc, hop.host);
  {
    auto turns = AwaitMessageTurns(shape, deadline);
    if (auto refused = co_await std::move(turns)) co_return *refused;
  }
  bool retried_fresh = false;
  for (;;) {
    std::unique_ptr<Conn> conn = cache_->Take(pool_key);
    const bool cached = conn != nullptr;
    if (cached) {
      auto reset = asio::co_spawn(conn->session->strand(), conn->session->Reset(), use_awaitable);
      if (!co_await std::move(reset)) {  // the peer dropped it while idle: not the host's fault
        auto close = Close(std::move(conn));
        co_await std::move(close);
        continue;
      }
    } else {
      auto open = Open(hop, cc, pool_key, deadline, &conn);
      if (auto failed = co_await std::move(open)) co_return *failed;
      if (!conn) continue;  // a session to the same address came back meanwhile
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
    auto keep = Keep(std::move(conn), shape.max_messages_per_connection);
    co_await std::move(keep);
    co_return at;
  }
}

// The source's warm-up rate, then the site's message rate: the turns come
// before a connection is taken.
awaitable<std::optional<Attempt>> ConnectionPool::AwaitMessageTurns(const SiteShape& shape,
                                                                    SteadyClock::time_point deadline) {
  if (!shape.source_rate.none()) {
    auto rate = permits_.AwaitRate("src:" + shape.source, shape.source_rate, deadline);
    if (!co_await std::move(rate)) {
      Probe::Get().Throttled("source_rate");
      co_return Throttled("4.4.5 message rate limit of " + shape.source_rate.ToString() + " for source " +
                          shape.source + " reached; will retry shortly");
    }
  }
  if (!shape.message_rate.none()) {
    auto rate = permits_.AwaitRate(shape.key, shape.message_rate, deadline);
    if (!co_await std::move(rate)) {
      Probe::Get().Throttled("rate");
      co_return Throttled("4.4.5 message rate limit of " + shape.message_rate.ToString() + " for " + shape.site +
                          " reached; will retry shortly");
    }
  }
  co_return std::nullopt;
}

awaitable<std::optional<Attempt>> ConnectionPool::Open(const Hop& hop, const SmtpClientConfig& cc,
                                                       const std::string& pool_key, SteadyClock::time_point deadline,
                                                       std::unique_ptr<Conn>* conn) {
  const SiteShape& shape = *hop.shape;
  if (!shape.connection_rate.none()) {
    auto rate = permits_.AwaitRate("conn:" + shape.key.substr(5), shape.connection_rate, deadline);  // per source too
    if (!co_await std::move(rate)) {
      Probe::Get().Throttled("connection_rate");
      co_return Throttled("4.4.5 connection rate limit of " + shape.connection_rate.ToString() + " for " + shape.site +
                          " reached; will retry shortly");
    }
  }
  std::string holder;
  const auto keys = SlotKeys(hop);
  if (!keys.empty()) {
    holder = options_.worker_id + "#" + std::to_string(serial_.fetch_add(1));
    auto slots = AwaitSlots(holder, keys, deadline);
    if (!co_await std::move(slots)) {
      if (cache_->Peek(pool_key)) co_return std::nullopt;  // maybe a session came back meanwhile
      Probe::Get().Throttled("connections");
      co_return Throttled(options_.single_thread_delivery && shape.max_connections == 0
                              ? "4.4.5 another delivery holds the connection to " + hop.host +
                                    " (single_thread_delivery); will retry shortly"
                              : "4.4.5 connection limit for " + shape.site + " reached; will retry shortly");
    }
  }
  auto c = std::make_unique<Conn>();
  c->holder = holder;
  c->pool_key = pool_key;
  Attempt failed;
  auto strand = asio::make_strand(io_.get_executor());
  auto open = asio::co_spawn(strand, opener_(strand, hop.ip, hop.port, cc, hop.host, &failed), use_awaitable);
  c->session = co_await std::move(open);
  if (!c->session) {
    auto close = Close(std::move(c));
    co_await std::move(close);
    co_return failed;
  }
  *conn = std::move(c);
  co_return std::nullopt;
}

// The connection slots keys name, for holder; false when none came free
// before deadline.
awaitable<bool> ConnectionPool::AwaitSlots(const std::string& holder, const std::vector<v1::PermitKey>& keys,
                                           SteadyClock::time_point deadline) {
  for (;;) {
    auto ask = permits_.Acquire(holder, keys);
    PermitAnswer pa = co_await std::move(ask);
    if (pa.granted) co_return true;
    const auto now = SteadyClock::now();
    if (now >= deadline) co_return false;
    auto slot = WaitForSlot(std::min<SteadyClock::duration>(pa.retry_after, deadline - now));
    co_await std::move(slot);
  }
}

// Waits until a slot or cached session may have come free, or for `max` (at most a second).
awaitable<void> ConnectionPool::WaitForSlot(SteadyClock::duration max) {
  auto t = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
  t->expires_after(std::min<SteadyClock::duration>(max, std::chrono::seconds(1)));
  cache_->AddWaiter(t);
  boost::system::error_code ec;
  auto wait = t->async_wait(asio::redirect_error(use_awaitable, ec));
  co_await std::move(wait);
  cache_->RemoveWaiter(t);
}

// Cached again while it may carry more, else closed.
awaitable<void> ConnectionPool::Keep(std::unique_ptr<Conn> c, uint32_t max_per_connection) {
  if (c->session->usable() && options_.cache_size > 0 &&
      (max_per_connection == 0 || c->session->transactions() < max_per_connection)) {
    auto evict = CloseEach(cache_->Put(std::move(c), options_.cache_size));
    co_await std::move(evict);
    cache_->WakeWaiters();
  } else {
    auto close = Close(std::move(c));
    co_await std::move(close);
  }
}

// Closes a session (QUIT) and gives its slots back.
awaitable<void> ConnectionPool::Close(std::unique_ptr<Conn> c) {
  if (c->session) {
    auto quit = asio::co_spawn(c->session->strand(), c->session->Quit(), use_awaitable);
    co_await std::move(quit);
  }
  permits_.Release(c->holder);
  cache_->WakeWaiters();
}

awaitable<void> ConnectionPool::CloseEach(std::vector<std::unique_ptr<Conn>> conns) {
  for (auto& c : conns) {
    auto close = Close(std::move(c));
    co_await std::move(close);
  }
}

awaitable<void> ConnectionPool::CloseAll() {
  auto all = CloseEach(cache_->TakeAll());
  co_await std::move(all);
}

awaitable<void> ConnectionPool::Sweep(const std::atomic<bool>& stopping) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  while (!stopping) {
    t.expires_after(std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
    auto expired = CloseEach(cache_->IdleSince(SteadyClock::now() - options_.cache_timeout));
    co_await std::move(expired);
  }
}

void ConnectionPool::Clear() {
  auto rest = cache_->TakeAll();
  cache_->ClearWaiters();
}

}  // namespace mx::delivery
