// fakes.h — fakes behind the delivery worker's interfaces (the queue and
// metadata links, SMTP sessions, the resolver) and a helper that runs one
// awaitable to completion, for the unit tests of the worker's parts.
#pragma once

#include <utility>

#include <boost/asio.hpp>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "connection_pool.h"
#include "mx/delivery/resolver.h"
#include "queue_link.h"
#include "smtp_client.h"

namespace mx::delivery::testing {

namespace asio = boost::asio;

// Runs a to completion on io (and whatever else it started).
template <typename T>
T Await(asio::io_context& io, asio::awaitable<T> a) {
  auto f = asio::co_spawn(io, std::move(a), asio::use_future);
  io.restart();
  io.run();
  return f.get();
}

// The metadata shard: answers at once (inline), records every request.
class FakeMetadata final : public MetadataLink {
 public:
  std::mutex mu;
  std::vector<v1::PermitRequest> permits;
  // The answer to a Permit call; default: granted.
  std::function<v1::PermitResponse(const v1::PermitRequest&)> answer = [](const v1::PermitRequest&) {
    v1::PermitResponse r;
    r.set_granted(true);
    return r;
  };
  bool unreachable = false;  // every call UNAVAILABLE
  std::vector<v1::SiteStatus> site_sets;
  std::vector<v1::SuppressRequest> suppressions;
  v1::ListSiteStatusResponse sites;

  void Permit(v1::PermitRequest req,
              std::function<void(const grpc::Status&, const v1::PermitResponse&)> done) override {
    v1::PermitResponse resp;
    {
      std::lock_guard lock(mu);
      permits.push_back(req);
      if (!unreachable) resp = answer(req);
    }
    done(Status(), resp);
  }
  void SetSiteStatus(v1::SiteStatus status, std::function<void(const grpc::Status&)> done) override {
    {
      std::lock_guard lock(mu);
      site_sets.push_back(std::move(status));
    }
    done(Status());
  }
  void Suppress(v1::SuppressRequest req,
                std::function<void(const grpc::Status&, const v1::SuppressResponse&)> done) override {
    v1::SuppressResponse resp;
    resp.set_added(static_cast<uint32_t>(req.add_size()));
    {
      std::lock_guard lock(mu);
      suppressions.push_back(std::move(req));
    }
    done(Status(), resp);
  }
  grpc::Status ListSiteStatus(v1::ListSiteStatusResponse* resp) override {
    std::lock_guard lock(mu);
    *resp = sites;
    return Status();
  }
  size_t PermitCalls(v1::PermitRequest::Op op) {
    std::lock_guard lock(mu);
    size_t n = 0;
    for (const auto& p : permits) n += p.op() == op;
    return n;
  }

 private:
  grpc::Status Status() const {
    return unreachable ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake metadata shard down") : grpc::Status::OK;
  }
};

// The shards: host status per shard; Acks held or answered as the test says.
class FakeQueue final : public QueueLink {
 public:
  struct Call {
    uint32_t shard;
    std::shared_ptr<const v1::AckRequest> req;
    std::function<void(const grpc::Status&, bool)> done;
  };
  explicit FakeQueue(uint32_t shards = 1) : hosts(shards), failing(shards, false) {}

  std::mutex mu;
  std::vector<v1::ListHostStatusResponse> hosts;  // per shard
  std::vector<bool> failing;                      // ListHostStatus of that shard fails
  std::set<uint32_t> retired;                     // not serving (creating or retired): never asked
  size_t host_lists = 0;
  bool hold = false;           // Acks wait for Answer()
  std::vector<Call> held;      // in arrival order
  std::vector<Call> answered;  // every Ack answered so far (with its request)
  // The status an answered Ack gets; default OK.
  std::function<std::pair<grpc::Status, bool>(const v1::AckRequest&)> verdict = [](const v1::AckRequest&) {
    return std::pair{grpc::Status::OK, false};
  };

  uint32_t shards() const override { return static_cast<uint32_t>(hosts.size()); }
  bool Serving(uint32_t shard) const override { return !retired.count(shard); }
  void Ack(uint32_t shard, std::shared_ptr<const v1::AckRequest> req, std::chrono::system_clock::time_point,
           std::function<void(const grpc::Status&, bool)> done) override {
    std::unique_lock lock(mu);
    Call c{shard, std::move(req), std::move(done)};
    if (hold) {
      held.push_back(std::move(c));
      return;
    }
    lock.unlock();
    Finish(std::move(c));
  }
  grpc::Status ListHostStatus(uint32_t shard, v1::ListHostStatusResponse* resp) override {
    std::lock_guard lock(mu);
    ++host_lists;
    if (failing[shard] || retired.count(shard)) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake shard down");
    *resp = hosts[shard];
    return grpc::Status::OK;
  }
  // Answers the oldest held Ack; false when none is held.
  bool AnswerOne() {
    std::unique_lock lock(mu);
    if (held.empty()) return false;
    Call c = std::move(held.front());
    held.erase(held.begin());
    lock.unlock();
    Finish(std::move(c));
    return true;
  }
  size_t Held() {
    std::lock_guard lock(mu);
    return held.size();
  }

 private:
  void Finish(Call c) {
    auto [status, new_leader] = verdict(*c.req);
    auto done = c.done;
    {
      std::lock_guard lock(mu);
      answered.push_back(std::move(c));
    }
    done(status, new_leader);
  }
};

// What a fake SMTP server at one address does.
struct FakeServer {
  std::string open_error;      // non-empty: the connection fails (try_next)
  bool tls_breaks = false;     // a session asked to STARTTLS fails its handshake
  bool reset_ok = true;        // RSET on a cached session
  std::vector<Attempt> sends;  // one per transaction in order; then every recipient 250
};

// The network: fake servers by address; what was opened, sent and closed.
class FakeNet {
 public:
  std::map<std::string, FakeServer> servers;
  struct Open {
    std::string ip, sni;
    SmtpClientConfig::Tls tls;
    bool verify;
    std::string source;
  };
  std::vector<Open> opens;
  std::vector<std::string> sends;  // address of each transaction
  int quits = 0;

  SessionOpener Opener();
};

class FakeSession final : public SmtpSession {
 public:
  FakeSession(FakeNet& net, std::string ip, asio::strand<asio::any_io_executor> strand)
      : net_(net), ip_(std::move(ip)), strand_(std::move(strand)) {}

  asio::awaitable<Attempt> Send(const v1::Envelope&, const std::string&,
                                const std::vector<ClientRcpt>& rcpts) override {
    net_.sends.push_back(ip_);
    ++transactions_;
    auto& script = net_.servers[ip_].sends;
    if (!script.empty()) {
      Attempt a = script.front();
      script.erase(script.begin());
      if (a.try_next) usable_ = false;
      co_return a;
    }
    Attempt a;
    for (size_t i = 0; i < rcpts.size(); ++i)
      a.rcpts.push_back(RcptOutcome{v1::OUTCOME_DELIVERED, "250 2.0.0 Ok", "2.0.0"});
    co_return a;
  }
  asio::awaitable<bool> Reset() override { co_return net_.servers[ip_].reset_ok; }
  asio::awaitable<void> Quit() override {
    ++net_.quits;
    co_return;
  }
  bool usable() const override { return usable_; }
  uint32_t transactions() const override { return transactions_; }
  const std::string& tls() const override { return tls_; }
  asio::strand<asio::any_io_executor> strand() const override { return strand_; }

 private:
  FakeNet& net_;
  std::string ip_;
  asio::strand<asio::any_io_executor> strand_;
  std::string tls_;
  bool usable_ = true;
  uint32_t transactions_ = 0;
};

inline asio::awaitable<std::unique_ptr<SmtpSession>> FakeOpen(FakeNet* net, asio::strand<asio::any_io_executor> strand,
                                                              std::string ip, SmtpClientConfig::Tls tls, bool verify,
                                                              std::string sni, std::string source, Attempt* failure) {
  net->opens.push_back(FakeNet::Open{ip, sni, tls, verify, source});
  const FakeServer& s = net->servers[ip];
  if (!s.open_error.empty()) {
    failure->try_next = true;
    failure->error = s.open_error;
    co_return nullptr;
  }
  if (s.tls_breaks && tls != SmtpClientConfig::Tls::kNone) {
    failure->try_next = true;
    failure->tls_failed = true;
    failure->error = "TLS handshake failed";
    co_return nullptr;
  }
  co_return std::make_unique<FakeSession>(*net, ip, std::move(strand));
}

inline SessionOpener FakeNet::Opener() {
  return [this](asio::strand<asio::any_io_executor> strand, std::string ip, uint16_t, const SmtpClientConfig& cc,
                std::string sni, Attempt* failure) {
    return FakeOpen(this, std::move(strand), std::move(ip), cc.tls, cc.verify, std::move(sni), cc.source_address,
                    failure);
  };
}

// MX and host answers from tables; anything else fails temporarily.
class FakeResolver final : public Resolver {
 public:
  std::map<std::string, MxAnswer> mx, hosts;
  std::map<std::string, TlsaAnswer> tlsa;  // by host
  std::vector<std::string> asked;

  void ResolveMx(const std::string& domain, std::function<void(MxAnswer)> done) override {
    asked.push_back("mx:" + domain);
    done(Find(mx, domain));
  }
  void ResolveHost(const std::string& host, std::function<void(MxAnswer)> done) override {
    asked.push_back("host:" + host);
    done(Find(hosts, host));
  }
  void ResolveTlsa(const std::string& host, uint16_t, std::function<void(TlsaAnswer)> done) override {
    asked.push_back("tlsa:" + host);
    auto it = tlsa.find(host);
    TlsaAnswer none;
    none.kind = TlsaAnswer::Kind::kNone;
    done(it == tlsa.end() ? none : it->second);
  }

 private:
  static MxAnswer Find(const std::map<std::string, MxAnswer>& table, const std::string& name) {
    auto it = table.find(name);
    if (it != table.end()) return it->second;
    MxAnswer a;
    a.kind = MxAnswer::Kind::kTempFail;
    a.error = "4.4.3 fake resolver has no answer for " + name;
    return a;
  }
};

// An MX answer: (name, preference, addresses) in the order given.
inline MxAnswer Mx(std::vector<MxHost> hosts, bool secure = false) {
  MxAnswer a;
  a.kind = MxAnswer::Kind::kOk;
  a.secure = secure;
  a.hosts = std::move(hosts);
  return a;
}

}  // namespace mx::delivery::testing
