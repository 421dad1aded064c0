// connection_pool.h — delivery's SMTP sessions and the cluster-wide slots they
// hold. One transaction goes over a cached session (RSET first) or a new one
// opened within the site's limits: the source's and the site's message rate,
// the site's connection rate, its connection slots and, with
// SingleThreadDelivery, the MX host's single slot. Afterwards the session is
// cached again (ConnectionCacheSize, ConnectionCacheTimeout) while it may
// carry more; a closed session gives its slots back at once.
//
// A limit that does not allow the transaction within the wait returns an
// Attempt with `throttled` set (a put-back, not a failure of the host).
#pragma once

#include <utility>  // before Boost.Asio's awaitable.hpp, which uses std::exchange

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "mx/delivery/shaping.h"
#include "permit_client.h"
#include "smtp_client.h"

namespace mx::delivery {

// Opens a session (SmtpSession::Open, or a fake in tests).
using SessionOpener = std::function<boost::asio::awaitable<std::unique_ptr<SmtpSession>>(
    boost::asio::strand<boost::asio::any_io_executor> strand, std::string ip, uint16_t port,
    const SmtpClientConfig& config, std::string sni, Attempt* failure)>;
SessionOpener SmtpOpener();

// Where one transaction goes.
struct Hop {
  const SiteShape* shape = nullptr;  // the site's limits (with the egress source)
  std::string mailer;
  std::string host;  // MX host name (the SingleThreadDelivery slot, the TLS name)
  std::string ip;
  uint16_t port = 25;
};

class ConnectionPool {
 public:
  struct Options {
    std::string worker_id;  // names the permit holders
    size_t cache_size = 0;  // idle sessions kept; 0: none
    std::chrono::steady_clock::duration cache_timeout = std::chrono::seconds(10);
    std::chrono::steady_clock::duration limit_wait = std::chrono::seconds(30);  // for a slot or a turn
    bool single_thread_delivery = false;
  };

  ConnectionPool(boost::asio::io_context& io, PermitClient& permits, Options options,
                 SessionOpener opener = SmtpOpener());
  ~ConnectionPool();

  boost::asio::awaitable<Attempt> Transact(const Hop& hop, const SmtpClientConfig& cc, const v1::LeasedMessage& m,
                                           const std::vector<ClientRcpt>& rcpts);
  // Closes idle sessions past the cache timeout, once a second, until stopping.
  boost::asio::awaitable<void> Sweep(const std::atomic<bool>& stopping);
  // QUIT to every idle session.
  boost::asio::awaitable<void> CloseAll();
  // Drops what is left (sessions, waiters' timers) while the io_context exists.
  void Clear();
  size_t idle() const;

 private:
  struct Conn;
  class Cache;

  boost::asio::awaitable<std::optional<Attempt>> AwaitMessageTurns(const SiteShape& shape,
                                                                   std::chrono::steady_clock::time_point deadline);
  // A new session within the connection rate and slots: conn, or why not.
  boost::asio::awaitable<std::optional<Attempt>> Open(const Hop& hop, const SmtpClientConfig& cc,
                                                      const std::string& pool_key,
                                                      std::chrono::steady_clock::time_point deadline,
                                                      std::unique_ptr<Conn>* conn);
  boost::asio::awaitable<bool> AwaitSlots(const std::string& holder, const std::vector<v1::PermitKey>& keys,
                                          std::chrono::steady_clock::time_point deadline);
  boost::asio::awaitable<void> WaitForSlot(std::chrono::steady_clock::duration max);
  boost::asio::awaitable<void> Keep(std::unique_ptr<Conn> c, uint32_t max_per_connection);
  boost::asio::awaitable<void> Close(std::unique_ptr<Conn> c);
  boost::asio::awaitable<void> CloseEach(std::vector<std::unique_ptr<Conn>> conns);
  std::vector<v1::PermitKey> SlotKeys(const Hop& hop) const;

  boost::asio::io_context& io_;
  PermitClient& permits_;
  const Options options_;
  SessionOpener opener_;
  std::unique_ptr<Cache> cache_;
  std::atomic<uint64_t> serial_{0};
};

}  // namespace mx::delivery
