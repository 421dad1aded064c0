// ares_resolver.cc — c-ares resolver running on its own thread.
#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "mx/common/log.h"
#include "mx/delivery/probe.h"
#include "mx/delivery/resolver.h"

namespace mx::delivery {
namespace {

bool IsTemporary(int status) {
  return status != ARES_ENOTFOUND && status != ARES_ENODATA;
}

class AresResolver final : public Resolver {
 public:
  ~AresResolver() override {
    stop_ = true;
    Wake();
    if (thread_.joinable()) thread_.join();
    if (channel_) ares_destroy(channel_);
    close(wake_[0]);
    close(wake_[1]);
  }

  Status Init(const std::vector<std::string>& servers, std::chrono::milliseconds timeout) {
    if (pipe(wake_) != 0) return Status(Code::kInternal, "pipe failed");
    ares_options opts{};
    opts.timeout = static_cast<int>(std::max<int64_t>(timeout.count() / 2, 100));
    opts.tries = 2;
    int rc = ares_init_options(&channel_, &opts, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) return Status(Code::kInternal, std::string("ares_init: ") + ares_strerror(rc));
    if (!servers.empty()) {
      std::string csv;
      for (const auto& s : servers) csv += (csv.empty() ? "" : ",") + s;
      rc = ares_set_servers_ports_csv(channel_, csv.c_str());
      if (rc != ARES_SUCCESS) {
        return Status(Code::kInvalidArgument, "delivery.dns_servers '" + csv + "': " + ares_strerror(rc));
      }
    }
    thread_ = std::thread([this] { Run(); });
    return Status::Ok();
  }

  void ResolveMx(const std::string& domain, std::function<void(MxAnswer)> done) override {
    Submit([this, domain, done = std::move(done)]() mutable { StartMx(domain, std::move(done)); });
  }

  void ResolveHost(const std::string& host, std::function<void(MxAnswer)> done) override {
    Submit([this, host, done = std::move(done)]() mutable {
      auto req = std::make_shared<Request>();
      req->done = std::move(done);
      req->answer.kind = MxAnswer::Kind::kOk;
      req->answer.hosts.push_back(MxHost{host, 0, {}});
      LookupAddrs(req);
    });
  }

 private:
  // One ResolveMx/ResolveHost in progress (only touched on the resolver thread).
  struct Request {
    std::string domain;
    MxAnswer answer;
    size_t pending = 0;
    std::function<void(MxAnswer)> done;
    std::string temp_error, perm_error;  // from address lookups
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  };
  struct QueryCtx {
    AresResolver* self;
    std::shared_ptr<Request> req;
    size_t host_index;
    bool is_mx;
  };

  void Submit(std::function<void()> job) {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(std::move(job));
    }
    Wake();
  }
  void Wake() {
    char c = 1;
    [[maybe_unused]] auto n = write(wake_[1], &c, 1);
  }

  void StartMx(const std::string& domain, std::function<void(MxAnswer)> done) {
    auto req = std::make_shared<Request>();
    req->domain = domain;
    req->done = std::move(done);
    auto* ctx = new QueryCtx{this, req, 0, true};
    ares_query(channel_, domain.c_str(), ns_c_in, ns_t_mx, &AresResolver::OnAnswer, ctx);
  }

  // Queries A for every host of req; finishes when all answered.
  void LookupAddrs(const std::shared_ptr<Request>& req) {
    req->pending = req->answer.hosts.size();
    if (req->pending == 0) return Finish(req);
    for (size_t i = 0; i < req->answer.hosts.size(); ++i) {
      const auto& name = req->answer.hosts[i].name;
      in_addr literal{};
      if (inet_pton(AF_INET, name.c_str(), &literal) == 1) {  // an IP literal needs no lookup
        req->answer.hosts[i].addrs.push_back(name);
        if (--req->pending == 0) Finish(req);
        continue;
      }
      auto* ctx = new QueryCtx{this, req, i, false};
      ares_query(channel_, name.c_str(), ns_c_in, ns_t_a, &AresResolver::OnAnswer, ctx);
    }
  }

  static void OnAnswer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
    std::unique_ptr<QueryCtx> ctx(static_cast<QueryCtx*>(arg));
    if (status == ARES_EDESTRUCTION) return;
    Probe::Get().DnsQuery(ctx->is_mx ? "MX" : "A", status == ARES_SUCCESS ? "ok" : ares_strerror(status));
    if (ctx->is_mx)
      ctx->self->OnMx(ctx->req, status, abuf, alen);
    else
      ctx->self->OnA(ctx->req, ctx->host_index, status, abuf, alen);
  }

  void OnMx(const std::shared_ptr<Request>& req, int status, unsigned char* abuf, int alen) {
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

  void OnA(const std::shared_ptr<Request>& req, size_t index, int status, unsigned char* abuf, int alen) {
    auto& host = req->answer.hosts[index];
    if (status == ARES_SUCCESS) {
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
    } else if (IsTemporary(status)) {
      req->temp_error = "Name server: " + host.name + ": " + ares_strerror(status);
    } else {
      req->perm_error = "Host unknown (Name server: " + host.name + ": host not found)";
    }
    if (--req->pending == 0) Finish(req);
  }

  void Finish(const std::shared_ptr<Request>& req) {
    auto& ans = req->answer;
    if (ans.kind == MxAnswer::Kind::kOk) {
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

  void Run() {
    while (!stop_) {
      std::deque<std::function<void()>> jobs;
      {
        std::lock_guard lock(mu_);
        jobs.swap(jobs_);
      }
      for (auto& j : jobs) j();
      ares_socket_t socks[ARES_GETSOCK_MAXNUM];
      int bits = ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
      std::vector<pollfd> fds;
      fds.push_back(pollfd{wake_[0], POLLIN, 0});
      for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short ev = 0;
        if (ARES_GETSOCK_READABLE(bits, i)) ev |= POLLIN;
        if (ARES_GETSOCK_WRITABLE(bits, i)) ev |= POLLOUT;
        if (ev) fds.push_back(pollfd{socks[i], ev, 0});
      }
      timeval max{1, 0}, tv{};
      timeval* t = ares_timeout(channel_, &max, &tv);
      int ms = static_cast<int>(t->tv_sec * 1000 + t->tv_usec / 1000);
      int n = poll(fds.data(), fds.size(), ms);
      if (n < 0) continue;
      if (fds[0].revents & POLLIN) {
        char buf[64];
        [[maybe_unused]] auto r = read(wake_[0], buf, sizeof buf);
      }
      bool any = false;
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        any = true;
        ares_socket_t r = (fds[i].revents & (POLLIN | POLLERR | POLLHUP)) ? fds[i].fd : ARES_SOCKET_BAD;
        ares_socket_t w = (fds[i].revents & POLLOUT) ? fds[i].fd : ARES_SOCKET_BAD;
        ares_process_fd(channel_, r, w);
      }
      if (!any) ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
    }
  }

  ares_channel channel_ = nullptr;
  int wake_[2] = {-1, -1};
  std::mutex mu_;
  std::deque<std::function<void()>> jobs_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

Result<std::unique_ptr<Resolver>> MakeAresResolver(const std::vector<std::string>& servers,
                                                   std::chrono::milliseconds timeout) {
  static const int init = ares_library_init(ARES_LIB_INIT_ALL);
  if (init != ARES_SUCCESS) return Status(Code::kInternal, "ares_library_init failed");
  auto r = std::make_unique<AresResolver>();
  if (auto st = r->Init(servers, timeout); !st.ok()) return st;
  return std::unique_ptr<Resolver>(std::move(r));
}

}  // namespace mx::delivery
