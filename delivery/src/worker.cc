// worker.cc — Pull → resolve → SMTP → Ack loop of the delivery role.
#include "mx/delivery/worker.h"

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <condition_variable>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "mx/common/address.h"
#include "mx/common/async_call.h"
#include "mx/common/grpc_server.h"
#include "mx/common/log.h"
#include "mx/common/qid.h"
#include "mx/delivery/dsn.h"
#include "mx/delivery/probe.h"
#include "mx/delivery/smtp_client.h"
#include "mx/queue/client.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::delivery {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;

constexpr const char* kMailer = "esmtp";

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

// The cluster's host status as this worker knows it: refreshed from every
// shard every couple of seconds, updated at once by its own attempts.
class HostCache {
 public:
  // The reply to report when host must be skipped (it failed within timeout).
  std::optional<std::string> SkipReason(const std::string& host, int64_t now_us, int64_t timeout_us) const {
    if (timeout_us <= 0) return std::nullopt;
    std::lock_guard lock(mu_);
    auto it = hosts_.find(host);
    if (it == hosts_.end() || it->second.consecutive_failures() == 0) return std::nullopt;
    if (now_us - it->second.last_attempt_unix_us() >= timeout_us) return std::nullopt;
    return it->second.last_reply();
  }
  // Successes are reported to the queue only when they change something (the
  // host had failed, is unknown, or was last reported a minute ago), so a
  // busy host does not cost a replicated write per message.
  bool ShouldReport(const std::string& host, bool ok, int64_t now_us) const {
    if (!ok) return true;
    std::lock_guard lock(mu_);
    auto it = hosts_.find(host);
    return it == hosts_.end() || it->second.consecutive_failures() > 0 ||
           now_us - it->second.last_attempt_unix_us() > 60'000'000;
  }
  void Record(const std::string& host, bool ok, const std::string& reply, int64_t now_us) {
    std::lock_guard lock(mu_);
    auto& h = hosts_[host];
    h.set_host(host);
    h.set_last_attempt_unix_us(now_us);
    h.set_last_reply(reply);
    h.set_consecutive_failures(ok ? 0 : h.consecutive_failures() + 1);
  }
  // Replaces the view with the shards' (newest entry per host wins; hosts no
  // shard knows any more were purged).
  size_t Merge(const std::vector<v1::HostStatus>& from_shards, int64_t refresh_started_us) {
    std::unordered_map<std::string, v1::HostStatus> merged;
    for (const auto& h : from_shards) {
      auto [it, fresh] = merged.emplace(h.host(), h);
      if (!fresh && h.last_attempt_unix_us() > it->second.last_attempt_unix_us()) it->second = h;
    }
    std::lock_guard lock(mu_);
    for (auto& [host, local] : hosts_) {  // our own attempts since the refresh began are newer
      if (local.last_attempt_unix_us() < refresh_started_us) continue;
      auto it = merged.find(host);
      if (it == merged.end() || it->second.last_attempt_unix_us() < local.last_attempt_unix_us()) merged[host] = local;
    }
    hosts_ = std::move(merged);
    return hosts_.size();
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, v1::HostStatus> hosts_;
};

// Per-recipient outcome with where it came from.
struct Outcome {
  RcptOutcome r;
  std::string relay;
  bool dsn_forwarded = false;  // the next hop took over the NOTIFY request
  std::string tls;             // protocol and cipher when the session was encrypted
};

class Worker final : public DeliveryWorker {
 public:
  Worker(const Config& config, std::unique_ptr<Resolver> resolver, const Clock& clock)
      : config_(config.delivery),
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
    if (!config_.smart_host.empty()) smart_ = ParseRelay(config_.smart_host);
    if (!config_.fallback_mx_host.empty()) fallback_ = ParseRelay(config_.fallback_mx_host);
  }

  ~Worker() override { Stop(); }

  void Start() {
    for (unsigned i = 0; i < std::max(1u, config_.threads); ++i) threads_.emplace_back([this] { io_.run(); });
    // Each shard gets an equal share of the concurrency as Pull credits.
    const uint32_t n = router_.shards();
    for (uint32_t id = 0; id < n; ++id) {
      auto shard = std::make_shared<Shard>();
      shard->id = id;
      shard->budget = std::max<int64_t>(1, config_.concurrency / n);
      shards_.push_back(shard);
      pullers_.emplace_back([this, shard] { PullLoop(shard); });
    }
    if (config_.host_status_timeout.count() > 0) refresher_ = std::thread([this] { RefreshHostStatus(); });
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
    {
      // Ack callbacks touch this worker: wait for those in flight (each has a deadline).
      std::unique_lock lock(acks_mu_);
      acks_cv_.wait_for(lock, std::chrono::seconds(35), [&] { return acks_in_flight_ == 0; });
    }
    work_.reset();
    io_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    resolver_.reset();
  }

 private:
  struct Relay {
    std::string host;
    uint16_t port = 25;
    bool literal = false;  // [host]: no MX lookup
  };
  struct Shard {
    uint32_t id = 0;
    int64_t budget = 0;  // max messages in flight from this shard
    std::atomic<int64_t> in_flight{0};
    std::mutex mu;  // guards ctx and writes on stream
    grpc::ClientContext* ctx = nullptr;
    grpc::ClientReaderWriter<v1::PullRequest, v1::PullResponse>* stream = nullptr;
  };

  // Validated by ParseConfig: "[host]:port" skips the MX lookup.
  Relay ParseRelay(const std::string& text) const {
    auto hp = ParseHostPort(text, config_.smtp_port);
    return Relay{hp.ok() ? hp->host : text, hp.ok() ? hp->port : config_.smtp_port, text.front() == '['};
  }

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
        int64_t free = shard->budget - shard->in_flight.load();
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
          asio::co_spawn(asio::make_strand(io_), DeliverMessage(msg, shard), asio::detached);
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
      std::unique_lock lock(stop_mu_);
      stop_cv_.wait_for(lock, std::chrono::seconds(2), [&] { return stopping_.load(); });
    }
  }

  static v1::HostOutcome HostOutcomeOf(const std::string& host, bool ok, const std::string& reply) {
    v1::HostOutcome h;
    h.set_host(host);
    h.set_ok(ok);
    h.set_reply(reply);
    return h;
  }

  void ReturnCredit(const std::shared_ptr<Shard>& shard) {
    shard->in_flight.fetch_sub(1);
    Probe::Get().InFlight(-1);
    std::lock_guard lock(shard->mu);
    if (!shard->stream) return;  // the next stream starts with fresh credits
    v1::PullRequest more;
    more.set_credits(1);
    shard->stream->Write(more);
  }

  // Resolves the hosts to try for domain (or the smart host), in order.
  awaitable<MxAnswer> Route(const std::string& domain) {
    if (smart_) {
      MxAnswer a = co_await AsyncResolve(*resolver_, !smart_->literal, smart_->host, use_awaitable);
      co_return a;
    }
    MxAnswer a = co_await AsyncResolve(*resolver_, true, domain, use_awaitable);
    co_return a;
  }

  awaitable<std::vector<Outcome>> DeliverDomain(const std::string& domain, const v1::LeasedMessage& m,
                                                const std::vector<ClientRcpt>& rcpts,
                                                std::vector<v1::HostOutcome>* host_outcomes) {
    auto all = [&](v1::Outcome o, const std::string& dsn, const std::string& text) {
      return std::vector<Outcome>(rcpts.size(), Outcome{RcptOutcome{o, text, dsn}, "", false, ""});
    };
    MxAnswer route = co_await Route(domain);
    switch (route.kind) {
      case MxAnswer::Kind::kNoSuchDomain: co_return all(v1::OUTCOME_BOUNCED, "5.1.2", "550 5.1.2 " + route.error);
      case MxAnswer::Kind::kNullMx: co_return all(v1::OUTCOME_BOUNCED, "5.1.10", "556 5.1.10 " + route.error);
      case MxAnswer::Kind::kTempFail: co_return all(v1::OUTCOME_DEFERRED, "4.4.3", route.error);
      case MxAnswer::Kind::kOk: break;
    }
    // Secondary-MX role (sendmail: MX hosts in $=w): we and every host no
    // better than us are dropped; if we are the best, the mail would loop.
    if (!smart_) {
      int self_pref = -1;
      for (const auto& h : route.hosts) {
        std::string name = ToLower(h.name);
        if (!name.empty() && name.back() == '.') name.pop_back();
        if (self_names_.count(name) && (self_pref < 0 || h.preference < self_pref)) self_pref = h.preference;
      }
      if (self_pref >= 0) {
        std::erase_if(route.hosts, [&](const MxHost& h) { return h.preference >= self_pref; });
        if (route.hosts.empty()) {
          co_return all(v1::OUTCOME_BOUNCED, "5.4.6",
                        "554 5.4.6 mail for " + domain + " loops back to myself (this cluster is its best MX)");
        }
      }
    }
    uint16_t port = smart_ ? smart_->port : config_.smtp_port;
    std::string last_error = "no usable MX host";
    const int64_t hoststatus_us =
        std::chrono::duration_cast<std::chrono::microseconds>(config_.host_status_timeout).count();
    auto try_hosts = [&](const MxAnswer& ans, uint16_t p) -> awaitable<std::optional<std::vector<Outcome>>> {
      for (const auto& host : ans.hosts) {
        const std::string key = ToLower(host.name);
        // PersistentHostStatus: a host that failed recently is not tried again.
        if (auto reason = hosts_.SkipReason(key, clock_.NowUnixMicros(), hoststatus_us)) {
          last_error = *reason;
          Probe::Get().HostSkipped();
          log::Mail(m.envelope().qid(), "relay=" + host.name + ": skipped, host status: " + *reason);
          continue;
        }
        bool host_failed = false;
        for (const auto& ip : host.addrs) {
          const SmtpClientConfig& cc = encrypt_domains_.count(ToLower(domain)) ? encrypt_client_ : client_;
          auto ex = co_await asio::this_coro::executor;
          auto attempt = SmtpTransaction(ex, ip, p, cc, m.envelope(), m.body(), rcpts, host.name);
          Attempt at = co_await std::move(attempt);
          if (at.tls_failed && cc.tls == SmtpClientConfig::Tls::kMay) {
            // Opportunistic TLS that failed: the same host again, in the clear.
            log::Mail(m.envelope().qid(),
                      "relay=" + host.name + " [" + ip + "]: " + at.error + ", retrying without TLS");
            auto clear = SmtpTransaction(ex, ip, p, plain_client_, m.envelope(), m.body(), rcpts, host.name);
            at = co_await std::move(clear);
          }
          // sendmail style: "mx.example.com. [192.0.2.1]", or "[192.0.2.1] [192.0.2.1]" for a literal.
          std::string relay = (host.name == ip ? "[" + ip + "]" : host.name + ".") + " [" + ip + "]";
          if (at.try_next) {
            last_error = at.error + " with " + relay;
            log::Mail(m.envelope().qid(), "relay=" + relay + ": " + at.error + ", trying next host");
            host_failed = true;
            continue;
          }
          const int64_t now = clock_.NowUnixMicros();
          if (hosts_.ShouldReport(key, true, now)) {
            host_outcomes->push_back(HostOutcomeOf(key, true, at.rcpts.empty() ? "" : at.rcpts.front().reply));
            hosts_.Record(key, true, "250 ok", now);
          }
          std::vector<Outcome> out;
          for (auto& r : at.rcpts) out.push_back(Outcome{std::move(r), relay, at.dsn_forwarded, at.tls});
          co_return out;
        }
        if (host_failed) {  // every address of this host failed
          hosts_.Record(key, false, last_error, clock_.NowUnixMicros());
          host_outcomes->push_back(HostOutcomeOf(key, false, last_error));
        }
      }
      co_return std::nullopt;
    };
    if (auto out = co_await try_hosts(route, port)) co_return *out;
    if (fallback_) {  // FallbackMXhost: after every MX failed
      MxAnswer fb = co_await AsyncResolve(*resolver_, !fallback_->literal, fallback_->host, use_awaitable);
      if (fb.kind == MxAnswer::Kind::kOk) {
        if (auto out = co_await try_hosts(fb, fallback_->port)) co_return *out;
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
    const int64_t age = clock_.NowUnixMicros() - env.arrival_unix_us();
    const int64_t warn_us = std::chrono::duration_cast<std::chrono::microseconds>(config_.queue_warn).count();
    const int64_t return_us = std::chrono::duration_cast<std::chrono::microseconds>(config_.queue_return).count();
    std::vector<DsnRecipient> failed, delayed, relayed;
    std::vector<v1::HostOutcome> host_outcomes;
    for (const auto& [domain, idx] : by_domain) {
      std::vector<ClientRcpt> rcpts;
      for (int i : idx) {
        const auto& r = m->recipients(i);
        rcpts.push_back(ClientRcpt{r.address(), r.notify(), r.orcpt()});
      }
      auto attempt_start = std::chrono::steady_clock::now();
      auto deliver = DeliverDomain(domain, *m, rcpts, &host_outcomes);
      std::vector<Outcome> outs = co_await std::move(deliver);
      int64_t xdelay =
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - attempt_start)
              .count();
      for (size_t k = 0; k < idx.size(); ++k) {
        const auto& rc = m->recipients(idx[k]);
        Outcome& o = outs[k];
        // Timeout.queuereturn: a deferral of a message this old is final.
        if (o.r.outcome == v1::OUTCOME_DEFERRED && age >= return_us) {
          o.r.outcome = v1::OUTCOME_BOUNCED;
          o.r.reply = "Cannot send message for " + log::FormatDelay(age) + " (last: " + o.r.reply + ")";
          o.r.dsn_status = "4.4.7";
        }
        auto* res = ack.add_results();
        res->set_qid(env.qid());
        res->set_index(rc.index());
        res->set_outcome(o.r.outcome);
        res->set_reply(o.r.reply);
        res->set_dsn_status(o.r.dsn_status);
        res->set_relay(o.relay);
        res->set_mailer(kMailer);
        if (o.r.outcome == v1::OUTCOME_DELIVERED) res->set_bytes(env.size());
        const char* stat = o.r.outcome == v1::OUTCOME_DELIVERED  ? "Sent"
                           : o.r.outcome == v1::OUTCOME_DEFERRED ? "Deferred"
                                                                 : "User unknown";
        std::string stat_text =
            o.r.outcome == v1::OUTCOME_BOUNCED && o.r.dsn_status.rfind("5.1.1", 0) != 0 ? "Service unavailable" : stat;
        log::Mail(env.qid(),
                  "to=<" + rc.address() +
                      ">, delay=" + log::FormatDelay(clock_.NowUnixMicros() - env.arrival_unix_us()) +
                      ", xdelay=" + log::FormatDelay(xdelay) + ", mailer=" + kMailer +
                      ", pri=" + std::to_string(env.priority()) + ", relay=" + (o.relay.empty() ? domain : o.relay) +
                      (o.tls.empty() ? "" : ", tls=" + o.tls) + ", dsn=" + o.r.dsn_status +
                      ", stat=" + (o.r.outcome == v1::OUTCOME_BOUNCED ? stat_text : stat) + " (" + o.r.reply + ")");
        Probe::Get().Delivery(o.r.outcome == v1::OUTCOME_DELIVERED  ? "delivered"
                              : o.r.outcome == v1::OUTCOME_DEFERRED ? "deferred"
                                                                    : "bounced",
                              kMailer, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        DsnRecipient d{rc.address(), rc.orcpt(), o.r.dsn_status, o.relay, o.r.reply};
        if (o.r.outcome == v1::OUTCOME_BOUNCED && (DsnWanted(env, rc.notify(), DsnAction::kFailed) || env.is_dsn())) {
          failed.push_back(std::move(d));
        } else if (o.r.outcome == v1::OUTCOME_DEFERRED && age >= warn_us && !rc.delay_warned() &&
                   DsnWanted(env, rc.notify(), DsnAction::kDelayed)) {
          res->set_delay_warned(true);  // Timeout.queuewarn: once per recipient
          delayed.push_back(std::move(d));
        } else if (o.r.outcome == v1::OUTCOME_DELIVERED && !o.dsn_forwarded &&
                   DsnWanted(env, rc.notify(), DsnAction::kRelayed)) {
          d.status = "2.0.0";
          relayed.push_back(std::move(d));
        }
      }
    }
    QueueDsns(*m, std::move(failed), std::move(delayed), std::move(relayed), return_us, &ack);
    for (auto& h : host_outcomes) *ack.add_hosts() = std::move(h);
    m.reset();  // the body is no longer needed while the ack is in flight
    // Ack on gRPC's callback thread; the credit returns when it completes.
    auto op = std::make_shared<AckOp>();
    op->req = std::move(ack);
    op->req.set_shard(shard->id);
    op->shard = shard;
    op->deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
    {
      std::lock_guard lock(acks_mu_);
      ++acks_in_flight_;
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
    if (!s.ok()) {
      Probe::Get().AckFailed();
      log::Warn("ack to shard " + std::to_string(op->shard->id) + " failed (" + s.error_message() +
                "); the lease will expire and the recipients be retried");
    }
    ReturnCredit(op->shard);
    std::lock_guard lock(acks_mu_);
    if (--acks_in_flight_ == 0) acks_cv_.notify_all();
  }

  DeliveryConfig config_;
  queue::QueueRouter router_;
  std::string hostname_;
  std::unique_ptr<Resolver> resolver_;
  const Clock& clock_;
  QidGenerator qids_;
  SmtpClientConfig client_, encrypt_client_, plain_client_;
  std::set<std::string> encrypt_domains_;
  std::set<std::string> self_names_;
  std::optional<Relay> smart_, fallback_;
  std::string worker_id_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  std::vector<std::shared_ptr<Shard>> shards_;
  std::vector<std::thread> pullers_;
  HostCache hosts_;
  std::thread refresher_;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::mutex acks_mu_;
  std::condition_variable acks_cv_;
  int64_t acks_in_flight_ = 0;
};

}  // namespace

Result<std::unique_ptr<DeliveryWorker>> StartDelivery(const Config& config, std::unique_ptr<Resolver> resolver,
                                                      const Clock& clock) {
  auto w = std::make_unique<Worker>(config, std::move(resolver), clock);
  w->Start();
  return std::unique_ptr<DeliveryWorker>(std::move(w));
}

}  // namespace mx::delivery
