// dns.cc — the c-ares channel thread (poll loop over c-ares' sockets).
#include "mx/common/dns.h"
#include "mx/common/thread_name.h"

#include <ares.h>
#include <arpa/inet.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <thread>

namespace mx {
namespace {

class AresChannel final : public DnsChannel {
 public:
  ~AresChannel() override {
    stop_ = true;
    Wake();
    if (thread_.joinable()) thread_.join();
    if (channel_) ares_destroy(channel_);  // outstanding callbacks get ARES_EDESTRUCTION
    if (wake_[0] >= 0) close(wake_[0]);
    if (wake_[1] >= 0) close(wake_[1]);
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
      if (rc != ARES_SUCCESS) return Status(Code::kInvalidArgument, "DNS servers '" + csv + "': " + ares_strerror(rc));
    }
    thread_ = std::thread([this] {
      SetThreadName("mx-dns");
      Run();
    });
    return Status::Ok();
  }

  void Query(const std::string& name, int type, Done done) override {
    Post([this, name, type, done = std::move(done)]() mutable {
      auto* ctx = new Done(std::move(done));
      ares_query(channel_, name.c_str(), 1 /* C_IN */, type, &AresChannel::OnAnswer, ctx);
    });
  }

  void QueryAd(const std::string& name, int type, Done done) override {
    Post([this, name, type, done = std::move(done)]() mutable {
      unsigned char* q = nullptr;
      int qlen = 0;
      // No EDNS (0): the AD bit alone asks for it (RFC 6840 5.7); c-ares
      // retries a truncated answer over TCP.
      int rc = ares_create_query(name.c_str(), 1 /* C_IN */, type, 0, 1 /* RD */, &q, &qlen, 0);
      if (rc != ARES_SUCCESS) return done(rc, nullptr, 0);
      q[3] |= 0x20;  // AD
      auto* ctx = new Done(std::move(done));
      ares_send(channel_, q, qlen, &AresChannel::OnRawAnswer, ctx);
      ares_free_string(q);
    });
  }

  void Post(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(std::move(fn));
    }
    Wake();
  }

 private:
  static void OnAnswer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
    std::unique_ptr<Done> done(static_cast<Done*>(arg));
    if (status == ARES_EDESTRUCTION) return;
    (*done)(status, abuf, alen);
  }

  // ares_send reports any answer as success: map its RCODE as ares_query would.
  static void OnRawAnswer(void* arg, int status, int /*timeouts*/, unsigned char* abuf, int alen) {
    std::unique_ptr<Done> done(static_cast<Done*>(arg));
    if (status == ARES_EDESTRUCTION) return;
    if (status == ARES_SUCCESS && alen >= 12) {
      const int rcode = abuf[3] & 0x0f;
      const int ancount = (abuf[6] << 8) | abuf[7];
      if (rcode == 3) {
        status = ARES_ENOTFOUND;
      } else if (rcode == 2) {
        status = ARES_ESERVFAIL;
      } else if (rcode == 5) {
        status = ARES_EREFUSED;
      } else if (rcode != 0) {
        status = ARES_EBADRESP;
      } else if (ancount == 0) {
        status = ARES_ENODATA;
      }
    } else if (status == ARES_SUCCESS) {
      status = ARES_EBADRESP;
    }
    (*done)(status, abuf, alen);
  }

  void Wake() {
    char c = 1;
    [[maybe_unused]] auto n = write(wake_[1], &c, 1);
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

Result<std::unique_ptr<DnsChannel>> DnsChannel::Start(const std::vector<std::string>& servers,
                                                      std::chrono::milliseconds timeout) {
  static const int init = ares_library_init(ARES_LIB_INIT_ALL);
  if (init != ARES_SUCCESS) return Status(Code::kInternal, "ares_library_init failed");
  auto c = std::make_unique<AresChannel>();
  if (auto st = c->Init(servers, timeout); !st.ok()) return st;
  return std::unique_ptr<DnsChannel>(std::move(c));
}

bool AnswerIsSecure(const unsigned char* answer, int length) {
  return answer != nullptr && length >= 12 && (answer[3] & 0x20) != 0;
}

std::string ReverseName(const std::string& ip) {
  in_addr a4{};
  if (inet_pton(AF_INET, ip.c_str(), &a4) == 1) {
    const auto* b = reinterpret_cast<const unsigned char*>(&a4);
    return std::to_string(b[3]) + "." + std::to_string(b[2]) + "." + std::to_string(b[1]) + "." + std::to_string(b[0]);
  }
  in6_addr a6{};
  if (inet_pton(AF_INET6, ip.c_str(), &a6) == 1) {
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    for (int i = 15; i >= 0; --i) {
      out += kHex[a6.s6_addr[i] & 15];
      out += '.';
      out += kHex[a6.s6_addr[i] >> 4];
      if (i) out += '.';
    }
    return out;
  }
  return {};
}

}  // namespace mx
