// worker.cc — the delivery role: Pull streams → per-domain delivery → Ack.
//
// The Worker owns the pieces and wires them; none of them calls back into it
// (the Ack sender returns credits through a callback):
//   PullLoop (one thread per shard) → DeliverMessage (a coroutine per leased
//   message) → DomainDelivery per destination domain (ConnectionPool,
//   PermitClient, ClusterView, TlsFailureMemory, MtaSts, EgressSources) →
//   AckBuilder (outcomes, log lines, DSNs) → AckSender (coalesced Acks).
#include "mx/delivery/worker.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <condition_variable>
#include <future>
#include <map>
#include <thread>

#include "ack_builder.h"
#include "ack_sender.h"
#include "cluster_view.h"
#include "connection_pool.h"
#include "domain_delivery.h"
#include "egress.h"
#include "mta_sts.h"
#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/qid.h"
#include "mx/common/thread_name.h"
#include "mx/delivery/routing.h"
#include "mx/queue/client.h"
#include "mx/queue/shard_map.h"
#include "mx/v1/queue.grpc.pb.h"
#include "permit_client.h"
#include "probe.h"
#include "queue_link.h"
#include "tls_memory.h"

namespace mx::delivery {
namespace {

namespace asio = boost::asio;
using asio::awaitable;

// node/host/incarnation: the queue voids leases of older incarnations of
// node/host/ when this one connects (pid alone repeats: PID 1 in containers).
std::string WorkerId(const Config& config, const Clock& clock) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return config.node_name + "/" + host + "/" + std::to_string(getpid()) + "." +
         std::to_string(clock.NowUnixMicros() / 1000);
}

ConnectionPool::Options PoolOptions(const Config& config, const std::string& worker_id) {
  ConnectionPool::Options o;
  o.worker_id = worker_id;
  o.cache_size = config.delivery.connection_cache_size;
  o.cache_timeout = config.delivery.connection_cache_timeout;
  o.limit_wait = std::min<std::chrono::steady_clock::duration>(config.delivery.limit_wait, config.queue.lease_ttl / 3);
  o.single_thread_delivery = config.delivery.single_thread_delivery;
  return o;
}

MtaSts::Options StsOptions(const DeliveryConfig& config, std::shared_ptr<asio::ssl::context> ctx) {
  MtaSts::Options o;
  o.https_port = config.mta_sts_port;
  o.timeout = config.mta_sts_timeout;
  o.tls = std::move(ctx);
  return o;
}

class Worker final : public DeliveryWorker {
 public:
  // sts_ctx: delivery.mta_sts's verifying context (null: off).
  Worker(const Config& config, Routing routing, std::unique_ptr<Resolver> resolver, const Clock& clock,
         TlsProfiles profiles, std::shared_ptr<asio::ssl::context> sts_ctx)
      : config_(config.delivery),
        routing_(std::move(routing)),
        router_(config.delivery.queue, config.queue.shards),
        clock_(clock),
        worker_id_(WorkerId(config, clock)),
        qids_(clock, RandomQidTag()),
        ack_options_(AckBuilder::Options::From(config, worker_id_)),
        resolver_(std::move(resolver)),
        work_(asio::make_work_guard(io_)),
        queue_link_(MakeGrpcQueueLink(router_)),
        metadata_link_(MakeGrpcMetadataLink(router_)),
        permits_(*metadata_link_, calls_),
        cluster_(*queue_link_, *metadata_link_, calls_, clock, worker_id_),
        tls_memory_(clock, config_.tls_failure_memory),
        egress_(config_),
        sts_(sts_ctx ? std::make_unique<MtaSts>(*resolver_, clock, StsOptions(config_, std::move(sts_ctx))) : nullptr),
        pool_(io_, permits_, PoolOptions(config, worker_id_)),
        domains_(config_, config.hostname, std::move(profiles),
                 DomainDelivery::Parts{*resolver_, routing_, cluster_, pool_, tls_memory_, sts_.get(), egress_, clock}),
        acks_(*queue_link_, worker_id_, [this](uint32_t shard, uint32_t n) {
          if (auto s = ShardById(shard)) ReturnCredit(*s, n);
        }) {}

  ~Worker() override { Stop(); }

  void Start();
  void Stop() override;
  void SetDraining(bool draining) override;
  int64_t InFlight() const override;

 private:
  struct Shard {
    uint32_t id = 0;
    std::atomic<int64_t> budget{0};  // max messages in flight from this shard
    std::atomic<int64_t> in_flight{0};
    std::mutex mu;  // guards ctx and writes on stream
    grpc::ClientContext* ctx = nullptr;
    grpc::ClientReaderWriter<v1::PullRequest, v1::PullResponse>* stream = nullptr;
  };

  // Starts pulling from the shards the map says hold mail that are new here
  // and shares the concurrency among all of them.
  void FollowShards();
  std::shared_ptr<Shard> ShardById(uint32_t id) const;
  std::vector<std::shared_ptr<Shard>> Shards() const;
  void PullLoop(const std::shared_ptr<Shard>& shard);
  void Spawn(const std::shared_ptr<Shard>& shard, v1::LeasedMessage m);
  // Sleeps for d unless Stop() cuts it short; false when stopping.
  bool Pause(std::chrono::milliseconds d);
  awaitable<void> DeliverMessage(std::shared_ptr<v1::LeasedMessage> m, std::shared_ptr<Shard> shard);
  void ReturnCredit(Shard& shard, uint32_t n = 1);

  DeliveryConfig config_;
  Routing routing_;
  queue::QueueRouter router_;
  const Clock& clock_;
  const std::string worker_id_;
  QidGenerator qids_;
  const AckBuilder::Options ack_options_;
  std::unique_ptr<Resolver> resolver_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  InFlightCalls calls_;  // metadata calls whose callbacks touch the parts below
  std::unique_ptr<QueueLink> queue_link_;
  std::unique_ptr<MetadataLink> metadata_link_;
  PermitClient permits_;
  ClusterView cluster_;
  TlsFailureMemory tls_memory_;
  EgressSources egress_;
  std::unique_ptr<MtaSts> sts_;  // null: delivery.mta_sts is off
  ConnectionPool pool_;
  DomainDelivery domains_;
  mutable std::mutex shards_mu_;
  std::vector<std::shared_ptr<Shard>> shards_;  // before acks_: its credit callback uses them
  std::vector<std::thread> pullers_;            // one per shard, guarded by shards_mu_
  AckSender acks_;
  std::unique_ptr<queue::ShardMapFollower> shard_map_;  // shards added or drained while running
  std::atomic<bool> following_{false};                  // the shards at start are pulled from
  std::vector<std::thread> threads_;
  std::thread refresher_, renewer_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
};

void Worker::Start() {
  for (unsigned i = 0; i < std::max(1u, config_.threads); ++i) {
    threads_.emplace_back([this, i] {
      SetThreadName("mx-dlv-" + std::to_string(i));
      io_.run();
    });
  }
  FollowShards();
  following_ = true;
  shard_map_ = std::make_unique<queue::ShardMapFollower>(router_, std::chrono::seconds(2),
                                                         [this](const auto&) { FollowShards(); });
  // Every 2 s: host status (cluster-wide skips) and the suspended and slowed sites.
  refresher_ = std::thread([this] {
    SetThreadName("mx-hoststatus");
    do {
      cluster_.Refresh(config_.host_status_timeout.count() > 0);
    } while (Pause(std::chrono::seconds(2)));
  });
  // Permit holds live while their connections do.
  renewer_ = std::thread([this] {
    SetThreadName("mx-renew");
    while (Pause(std::chrono::duration_cast<std::chrono::milliseconds>(PermitClient::kRenewEvery))) {
      permits_.RenewAll();
    }
  });
  asio::co_spawn(io_, pool_.Sweep(stopping_), asio::detached);
  log::Info("delivery worker " + worker_id_ + " pulling from " + std::to_string(Shards().size()) +
            " queue shard(s) via " + std::to_string(config_.queue.size()) + " queue node(s)");
}

void Worker::FollowShards() {
  std::lock_guard lock(shards_mu_);
  if (stopping_) return;
  std::vector<std::shared_ptr<Shard>> added;
  for (uint32_t id = 0; id < router_.shards(); ++id) {
    if (!router_.Serving(id)) continue;
    if (std::any_of(shards_.begin(), shards_.end(), [&](const auto& s) { return s->id == id; })) continue;
    auto shard = std::make_shared<Shard>();
    shard->id = id;
    shards_.push_back(shard);
    added.push_back(shard);
    if (following_) log::Info("shard " + std::to_string(id) + " is in the shard map: pulling from it");
  }
  // Each shard gets an equal share of the concurrency as Pull credits (a
  // retired shard's puller idles: its queue hands out nothing). Set before
  // a new puller opens its stream with them; an open stream is told its new
  // count (revoke: the queue takes it instead of what it holds).
  const int64_t budget =
      std::max<int64_t>(1, config_.concurrency / std::max<int64_t>(static_cast<int64_t>(shards_.size()), 1));
  for (auto& s : shards_) {
    if (s->budget.exchange(budget) == budget) continue;
    std::lock_guard shard_lock(s->mu);
    if (!s->stream || draining_) continue;
    v1::PullRequest req;
    req.set_revoke(true);
    req.set_credits(static_cast<uint32_t>(std::max<int64_t>(0, budget - s->in_flight.load())));
    s->stream->Write(req);
  }
  for (auto& shard : added) {
    pullers_.emplace_back([this, shard] {
      SetThreadName("mx-pull-" + std::to_string(shard->id));
      PullLoop(shard);
    });
  }
}

std::shared_ptr<Worker::Shard> Worker::ShardById(uint32_t id) const {
  std::lock_guard lock(shards_mu_);
  for (const auto& s : shards_) {
    if (s->id == id) return s;
  }
  return nullptr;
}

std::vector<std::shared_ptr<Worker::Shard>> Worker::Shards() const {
  std::lock_guard lock(shards_mu_);
  return shards_;
}

bool Worker::Pause(std::chrono::milliseconds d) {
  std::unique_lock lock(stop_mu_);
  return !stop_cv_.wait_for(lock, d, [&] { return stopping_.load(); });
}

void Worker::Stop() {
  {
    std::lock_guard lock(stop_mu_);
    if (stopping_.exchange(true)) return;
    stop_cv_.notify_all();
  }
  shard_map_.reset();  // no more shards start
  acks_.Stop();        // no more retries
  for (auto& s : Shards()) {
    std::lock_guard lock(s->mu);
    if (s->ctx) s->ctx->TryCancel();
  }
  std::vector<std::thread> pullers;
  {
    std::lock_guard lock(shards_mu_);
    pullers.swap(pullers_);
  }
  for (auto& t : pullers) t.join();
  if (refresher_.joinable()) refresher_.join();
  if (renewer_.joinable()) renewer_.join();
  // Ack callbacks return credits to the shards: wait for those in flight (each has a deadline).
  acks_.WaitIdle(std::chrono::seconds(35));
  // QUIT to every cached session, then no Permit answer may still be on its way.
  {
    auto done = std::make_shared<std::promise<void>>();
    auto f = done->get_future();
    asio::co_spawn(io_, pool_.CloseAll(), [done](const std::exception_ptr&) { done->set_value(); });
    f.wait_for(std::chrono::seconds(10));
  }
  work_.reset();
  io_.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  // Sessions cached after CloseAll, and waiters' timers, go while io_ exists.
  pool_.Clear();
  // No coroutine runs any more, so no metadata call starts; those in flight
  // end by their deadline and only post to the stopped io_context.
  calls_.WaitIdle(std::chrono::seconds(6));
  resolver_.reset();
}

// One Pull stream at a time to the shard's leader; follows leader changes.
void Worker::PullLoop(const std::shared_ptr<Shard>& shard) {
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
      const int64_t free = draining_ ? 0 : shard->budget - shard->in_flight.load();
      first.set_credits(static_cast<uint32_t>(std::max<int64_t>(free, 0)));
      stream->Write(first);
    }
    v1::PullResponse resp;
    bool got_any = false;
    while (stream->Read(&resp)) {
      got_any = true;
      backoff_ms = 200;
      for (auto& m : *resp.mutable_messages()) Spawn(shard, std::move(m));
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
    if (!Pause(std::chrono::milliseconds(backoff_ms))) break;  // a reconnect pause that Stop() cuts short
    backoff_ms = std::min(backoff_ms * 2, 2000);
  }
}

void Worker::Spawn(const std::shared_ptr<Shard>& shard, v1::LeasedMessage m) {
  shard->in_flight.fetch_add(1);
  Probe::Get().InFlight(1);
  auto msg = std::make_shared<v1::LeasedMessage>(std::move(m));
  auto qid = msg->envelope().qid();
  asio::co_spawn(asio::make_strand(io_), DeliverMessage(msg, shard), [this, shard, qid](const std::exception_ptr& e) {
    if (!e) return;
    // Never expected; the lease expires and the recipients are retried.
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      log::Error(qid + ": delivery aborted: " + x.what());
    }
    ReturnCredit(*shard);
  });
}

// Each destination domain of the message in turn; then one Ack with every
// recipient's outcome, the host outcomes and the DSNs owed.
awaitable<void> Worker::DeliverMessage(std::shared_ptr<v1::LeasedMessage> m, std::shared_ptr<Shard> shard) {
  const auto start = std::chrono::steady_clock::now();
  // Group the leased recipients by destination domain, keeping their order.
  std::map<std::string, std::vector<int>> by_domain;
  for (int i = 0; i < m->recipients_size(); ++i) by_domain[DomainOf(m->recipients(i).address())].push_back(i);
  AckBuilder ack(ack_options_, clock_, qids_, *m);
  std::vector<v1::HostOutcome> hosts;
  for (const auto& [domain, all_idx] : by_domain) {
    const Route route = routing_.RouteFor(domain);
    // mxctl bounce: returned to the sender without another attempt.
    std::vector<int> idx, bounced;
    std::vector<ClientRcpt> rcpts;
    for (int i : all_idx) {
      const auto& r = m->recipients(i);
      if (r.operator_bounce()) {
        bounced.push_back(i);
        continue;
      }
      idx.push_back(i);
      rcpts.push_back(ClientRcpt{r.address(), r.notify(), r.orcpt()});
    }
    const auto attempt_start = std::chrono::steady_clock::now();
    DomainResult res;
    if (!rcpts.empty()) {
      auto deliver = domains_.Deliver(domain, route, *m, rcpts);
      res = co_await std::move(deliver);
    }
    for (int i : bounced) {
      idx.push_back(i);
      res.outcomes.push_back(Outcome{
          RcptOutcome{v1::OUTCOME_BOUNCED, "550 5.0.0 Message returned by the postmaster (mxctl bounce)", "5.0.0"}, "",
          false, "", false});
    }
    const AttemptInfo info{
        domain,
        route.mailer->name,
        res.site,
        res.source,
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - attempt_start).count(),
        start};
    for (size_t k = 0; k < idx.size(); ++k) ack.Add(m->recipients(idx[k]), std::move(res.outcomes[k]), info);
    for (auto& h : res.hosts) hosts.push_back(std::move(h));
  }
  v1::AckRequest req = ack.Finish();
  for (auto& h : hosts) *req.add_hosts() = std::move(h);
  cluster_.Suppress(ack.TakeSuppressions());
  m.reset();  // the body is no longer needed while the ack is in flight
  // The credit returns when the Ack completes.
  acks_.Send(shard->id, std::move(req));
}

void Worker::ReturnCredit(Shard& shard, uint32_t n) {
  shard.in_flight.fetch_sub(n);
  Probe::Get().InFlight(-static_cast<int>(n));
  std::lock_guard lock(shard.mu);
  if (!shard.stream || draining_) return;  // the next stream (or undrain) grants fresh credits
  v1::PullRequest more;
  more.set_credits(n);
  shard.stream->Write(more);
}

void Worker::SetDraining(bool draining) {
  if (draining_.exchange(draining) == draining) return;
  log::Info(draining ? "delivery draining: no new leases; deliveries in flight finish" : "delivery pulling again");
  for (auto& shard : Shards()) {
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

int64_t Worker::InFlight() const {
  int64_t n = 0;
  for (const auto& shard : Shards()) n += shard->in_flight.load();
  return n;
}

// delivery.mta_sts: verified TLS against the configured trust anchors, else the system's.
Result<std::shared_ptr<asio::ssl::context>> StsContext(const Config& config) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1);
  boost::system::error_code ec;
  const std::string& ca = config.delivery.tls_ca_file;
  if (ca.empty()) {
    ctx->set_default_verify_paths(ec);
  } else {
    ctx->load_verify_file(ca.front() == '/' ? ca : config.config_dir + "/" + ca, ec);
  }
  if (ec) {
    return Status(Code::kInvalidArgument,
                  "delivery.tls_ca_file: " + (ca.empty() ? "system" : ca) + ": " + ec.message());
  }
  return ctx;
}

// delivery.dane: a DANE-enabled client context.
Result<std::shared_ptr<asio::ssl::context>> DaneContext() {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3);
  if (SSL_CTX_dane_enable(ctx->native_handle()) <= 0) {
    return Status(Code::kInternal, "delivery.dane: OpenSSL cannot enable DANE");
  }
  return ctx;
}

}  // namespace

Result<std::unique_ptr<DeliveryWorker>> StartDelivery(const Config& config, std::unique_ptr<Resolver> resolver,
                                                      const Clock& clock) {
  auto routing = Routing::Load(config.delivery, config.config_dir);
  if (!routing.ok()) return routing.status();
  // The TLS contexts first: a bad trust anchor file stops the start before any thread does.
  TlsProfiles profiles = TlsProfiles::From(config.delivery);
  std::shared_ptr<asio::ssl::context> sts_ctx;
  if (config.delivery.mta_sts) {
    auto ctx = StsContext(config);
    if (!ctx.ok()) return ctx.status();
    sts_ctx = *ctx;
    profiles.EnableMtaSts(sts_ctx);
  }
  if (config.delivery.dane) {
    auto ctx = DaneContext();
    if (!ctx.ok()) return ctx.status();
    profiles.EnableDane(*ctx);
  }
  auto w = std::make_unique<Worker>(config, std::move(routing).value(), std::move(resolver), clock, std::move(profiles),
                                    std::move(sts_ctx));
  w->Start();
  return std::unique_ptr<DeliveryWorker>(std::move(w));
}

}  // namespace mx::delivery
