// mta_sts.cc — MTA-STS records, policies, the HTTPS fetch and the cache.
#include "mta_sts.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <charconv>

#include "mx/common/address.h"
#include "mx/common/log.h"

namespace mx::delivery {
namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;

namespace {

constexpr size_t kMaxPolicyBytes = size_t{64} * 1024;  // RFC 8461 3.3: senders may cap the body at 64 KB
constexpr int64_t kMaxAge = 31'557'600;                // RFC 8461 3.2: about one year
constexpr size_t kMaxCachedDomains = 100'000;

// One resolver call as an awaitable; the answer is posted to the caller's executor.
template <typename Answer, typename Start, typename Token>
auto AsyncCall(Start start, Token&& token) {
  return asio::async_initiate<Token, void(Answer)>(
      [start = std::move(start)](auto handler) mutable {
        auto ex = asio::get_associated_executor(handler);
        auto h = std::make_shared<decltype(handler)>(std::move(handler));
        start([h, ex](Answer a) { asio::post(ex, [h, a = std::move(a)]() mutable { (*h)(std::move(a)); }); });
      },
      token);
}

std::string_view TrimWs(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

const char* StsModeName(StsPolicy::Mode mode) {
  switch (mode) {
    case StsPolicy::Mode::kEnforce: return "enforce";
    case StsPolicy::Mode::kTesting: return "testing";
    case StsPolicy::Mode::kNone: return "none";
  }
  return "none";
}

bool StsMxMatches(std::string_view pattern, std::string_view host) {
  std::string h = ToLower(host);
  if (!h.empty() && h.back() == '.') h.pop_back();
  if (pattern.starts_with("*.")) {
    auto dot = h.find('.');
    return dot != std::string::npos && dot > 0 && std::string_view(h).substr(dot + 1) == pattern.substr(2);
  }
  return h == pattern;
}

bool StsPolicy::Matches(std::string_view host) const {
  return std::any_of(mx.begin(), mx.end(), [&](const std::string& p) { return StsMxMatches(p, host); });
}

std::string StsPolicy::MxList() const {
  std::string out;
  for (const auto& p : mx) out += (out.empty() ? "" : ", ") + p;
  return out;
}

Result<StsPolicy> ParseStsPolicy(std::string_view text) {
  StsPolicy p;
  bool version = false, mode = false, max_age = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = TrimWs(text.substr(pos, eol - pos));
    pos = eol + 1;
    if (line.empty()) continue;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return Status(Code::kInvalidArgument, "not a key: value line");
    std::string key = ToLower(TrimWs(line.substr(0, colon)));
    std::string_view value = TrimWs(line.substr(colon + 1));
    if (key == "version") {
      if (value != "STSv1") return Status(Code::kInvalidArgument, "version is not STSv1");
      version = true;
    } else if (key == "mode") {
      if (value == "enforce") {
        p.mode = StsPolicy::Mode::kEnforce;
      } else if (value == "testing") {
        p.mode = StsPolicy::Mode::kTesting;
      } else if (value == "none") {
        p.mode = StsPolicy::Mode::kNone;
      } else {
        return Status(Code::kInvalidArgument, "mode '" + std::string(value) + "' is not enforce, testing or none");
      }
      mode = true;
    } else if (key == "max_age") {
      int64_t v = -1;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (ec != std::errc() || end != value.data() + value.size() || v < 0 || value.size() > 10) {
        return Status(Code::kInvalidArgument, "max_age is not a number of seconds");
      }
      p.max_age_s = std::min(v, kMaxAge);
      max_age = true;
    } else if (key == "mx") {
      std::string m = ToLower(value);
      if (m.empty() || m.find_first_of(" \t") != std::string::npos) {
        return Status(Code::kInvalidArgument, "mx '" + std::string(value) + "' is not a host pattern");
      }
      if (m.back() == '.') m.pop_back();
      p.mx.push_back(std::move(m));
    }  // unknown keys are ignored (RFC 8461 3.2: extensions)
  }
  if (!version) return Status(Code::kInvalidArgument, "no version: STSv1");
  if (!mode) return Status(Code::kInvalidArgument, "no mode");
  if (!max_age) return Status(Code::kInvalidArgument, "no max_age");
  if (p.mode != StsPolicy::Mode::kNone && p.mx.empty()) return Status(Code::kInvalidArgument, "no mx");
  return p;
}

std::optional<std::string> ParseStsRecord(std::string_view txt) {
  // "v=STSv1; id=20160831085700Z;" — v first, then id (1-32 alphanumerics).
  std::optional<std::string> id;
  bool first = true;
  size_t pos = 0;
  while (pos <= txt.size()) {
    size_t semi = txt.find(';', pos);
    if (semi == std::string_view::npos) semi = txt.size();
    std::string_view field = TrimWs(txt.substr(pos, semi - pos));
    pos = semi + 1;
    if (field.empty()) {
      if (semi == txt.size()) break;
      continue;
    }
    auto eq = field.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    std::string_view k = TrimWs(field.substr(0, eq)), v = TrimWs(field.substr(eq + 1));
    if (first) {
      if (k != "v" || v != "STSv1") return std::nullopt;
      first = false;
    } else if (k == "id") {
      if (v.empty() || v.size() > 32 ||
          !std::all_of(v.begin(), v.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)); })) {
        return std::nullopt;
      }
      id = std::string(v);
    }
  }
  return id;
}

MtaSts::MtaSts(Resolver& resolver, const Clock& clock, Options options)
    : resolver_(resolver), clock_(clock), options_(std::move(options)) {}

awaitable<MtaSts::Answer> MtaSts::Lookup(std::string domain) {
  domain = ToLower(domain);
  const int64_t recheck_us = std::chrono::duration_cast<std::chrono::microseconds>(options_.recheck).count();
  Answer out;
  // Another lookup of this domain is fetching: wait for it (bounded by the fetch timeout).
  auto deadline = std::chrono::steady_clock::now() + options_.timeout + std::chrono::seconds(1);
  for (;;) {
    {
      std::lock_guard lock(mu_);
      auto& e = cache_[domain];
      const int64_t now = clock_.NowUnixMicros();
      if (e.policy && now >= e.policy->fetched_unix_us + e.policy->max_age_s * 1'000'000) e.policy.reset();
      if (now - e.checked_unix_us < recheck_us) {
        out.policy = e.policy;
        out.note = "cached";
        co_return out;
      }
      if (!e.fetching || std::chrono::steady_clock::now() > deadline) {
        e.fetching = true;
        break;
      }
    }
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(50));
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
  }
  std::optional<StsPolicy> cached;
  {
    std::lock_guard lock(mu_);
    cached = cache_[domain].policy;
  }
  // The TXT record says whether there is a policy and which.
  const std::string txt_name = "_mta-sts." + domain;
  auto txt_call =
      AsyncCall<TxtAnswer>([&](auto done) { resolver_.ResolveTxt(txt_name, std::move(done)); }, use_awaitable);
  TxtAnswer txt = co_await std::move(txt_call);
  std::optional<std::string> id;
  int records = 0;
  for (const auto& r : txt.records) {
    if (r.rfind("v=STSv1", 0) != 0) continue;
    ++records;
    id = ParseStsRecord(r);
  }
  if (records > 1) id.reset();  // RFC 8461 3.1: more than one record is no record
  std::optional<StsPolicy> policy = cached;
  if (txt.kind == TxtAnswer::Kind::kTempFail) {
    out.note = "TXT lookup failed (" + txt.error + ")" + (cached ? ", using the cached policy" : "");
  } else if (!id) {
    out.note = cached ? "no STS record, using the cached policy" : "no policy";
  } else if (cached && cached->id == *id) {
    out.note = "policy id " + *id + " unchanged";
  } else {
    auto fetch = Fetch(domain);
    auto body = co_await std::move(fetch);
    auto parsed = body.ok() ? ParseStsPolicy(*body) : Result<StsPolicy>(body.status());
    if (parsed.ok()) {
      parsed->id = *id;
      parsed->fetched_unix_us = clock_.NowUnixMicros();
      policy = std::move(*parsed);
      out.note = "fetched policy id " + *id;
    } else {
      out.note = "policy fetch failed (" + parsed.status().message() + ")" +
                 (cached ? ", using the cached policy" : ", no policy");
      log::Warn("MTA-STS " + domain + ": " + out.note);
    }
  }
  {
    std::lock_guard lock(mu_);
    if (cache_.size() > kMaxCachedDomains) {  // forget domains without a policy first
      std::erase_if(cache_, [&](const auto& kv) { return !kv.second.policy && !kv.second.fetching; });
    }
    auto& e = cache_[domain];
    e.policy = policy;
    e.checked_unix_us = clock_.NowUnixMicros();
    e.fetching = false;
  }
  out.policy = std::move(policy);
  co_return out;
}

namespace {

// One HTTPS GET on a strand of its own (the timer closes the socket).
struct FetchState {
  explicit FetchState(const asio::strand<asio::any_io_executor>& s, asio::ssl::context& ctx)
      : strand(s), socket(s), timer(s), tls(socket, ctx) {}
  asio::strand<asio::any_io_executor> strand;
  tcp::socket socket;
  asio::steady_timer timer;
  asio::ssl::stream<tcp::socket&> tls;
  bool timed_out = false;
  std::string error;  // why the fetch failed ("" when it did not)
};

awaitable<std::string> Get(std::shared_ptr<FetchState> st, std::vector<std::string> addrs, uint16_t port,
                           std::string host, std::chrono::seconds timeout) {
  st->timer.expires_after(timeout);
  st->timer.async_wait([st](boost::system::error_code ec) {
    if (ec) return;
    st->timed_out = true;
    boost::system::error_code ignored;
    st->socket.close(ignored);
  });
  boost::system::error_code ec;
  std::string where;
  for (const auto& a : addrs) {
    auto addr = asio::ip::make_address(a, ec);
    if (ec) continue;
    if (st->socket.is_open()) st->socket.close(ec);
    co_await st->socket.async_connect(tcp::endpoint(addr, port), asio::redirect_error(use_awaitable, ec));
    if (!ec) {
      where = a;
      break;
    }
    if (st->timed_out) break;
  }
  // Failures leave st->error set (co_spawn needs a default-constructible result).
  auto fail = [&](const std::string& what) {
    st->timer.cancel();
    st->error = st->timed_out ? "timed out" : what;
    return std::string();
  };
  if (where.empty()) co_return fail("cannot connect to " + host + ": " + ec.message());
  SSL* ssl = st->tls.native_handle();
  SSL_set_tlsext_host_name(ssl, host.c_str());
  SSL_set1_host(ssl, host.c_str());  // the certificate must name mta-sts.<domain>
  SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
  co_await st->tls.async_handshake(asio::ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    const long v = SSL_get_verify_result(ssl);
    co_return fail("TLS with " + host + " [" + where + "] failed: " +
                   (v != X509_V_OK ? std::string("certificate: ") + X509_verify_cert_error_string(v) : ec.message()));
  }
  // HTTP/1.0: no chunked encoding, the server closes after the body.
  const std::string req =
      "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: " + host + "\r\nUser-Agent: mx\r\nAccept: text/plain\r\n\r\n";
  co_await asio::async_write(st->tls, asio::buffer(req), asio::redirect_error(use_awaitable, ec));
  if (ec) co_return fail("sending the request to " + host + ": " + ec.message());
  std::string resp;
  char buf[8192];
  for (;;) {
    size_t n = co_await st->tls.async_read_some(asio::buffer(buf), asio::redirect_error(use_awaitable, ec));
    resp.append(buf, n);
    if (resp.size() > kMaxPolicyBytes + size_t{16} * 1024) co_return fail("the answer of " + host + " is too large");
    if (ec) break;  // EOF (or a truncated close, which many servers do)
  }
  if (st->timed_out) co_return fail("timed out");
  st->timer.cancel();
  auto head_end = resp.find("\r\n\r\n");
  if (head_end == std::string::npos) co_return fail(host + " sent no complete HTTP answer");
  std::string_view head(resp.data(), head_end);
  std::string body = resp.substr(head_end + 4);
  auto eol = head.find("\r\n");
  std::string_view status = head.substr(0, eol);
  // "HTTP/1.1 200 OK": redirects and everything but 200 are failures (RFC 8461 3.3).
  if (status.size() < 12 || !status.starts_with("HTTP/1.") || status.substr(9, 3) != "200") {
    co_return fail(host + " answered " + std::string(status));
  }
  for (size_t p = eol; p != std::string_view::npos && p < head.size();) {
    size_t next = head.find("\r\n", p + 2);
    std::string_view line = head.substr(p + 2, next == std::string_view::npos ? std::string_view::npos : next - p - 2);
    p = next;
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string name = ToLower(line.substr(0, colon));
    std::string value = ToLower(TrimWs(line.substr(colon + 1)));
    if (name == "content-type" && value.rfind("text/plain", 0) != 0) {
      co_return fail(std::string(host).append(" served the policy as ").append(value).append(", not text/plain"));
    }
    if (name == "content-length") {
      size_t len = 0;
      auto [e, err] = std::from_chars(value.data(), value.data() + value.size(), len);
      if (err == std::errc() && len < body.size()) body.resize(len);
    }
  }
  if (body.size() > kMaxPolicyBytes) co_return fail("the policy is over 64 KB");
  co_return body;
}

}  // namespace

awaitable<Result<std::string>> MtaSts::Fetch(std::string domain) {
  const std::string host = "mta-sts." + domain;
  auto resolve = AsyncCall<MxAnswer>([&](auto done) { resolver_.ResolveHost(host, std::move(done)); }, use_awaitable);
  MxAnswer a = co_await std::move(resolve);
  if (a.kind != MxAnswer::Kind::kOk || a.hosts.empty() || a.hosts[0].addrs.empty()) {
    co_return Status(Code::kUnavailable, "cannot resolve " + host + (a.error.empty() ? "" : ": " + a.error));
  }
  if (!options_.tls) co_return Status(Code::kFailedPrecondition, "no TLS context");
  auto strand = asio::make_strand(co_await asio::this_coro::executor);
  auto st = std::make_shared<FetchState>(strand, *options_.tls);
  auto get =
      asio::co_spawn(strand, Get(st, a.hosts[0].addrs, options_.https_port, host, options_.timeout), use_awaitable);
  std::string body = co_await std::move(get);
  if (!st->error.empty()) co_return Status(Code::kUnavailable, st->error);
  co_return body;
}

}  // namespace mx::delivery
