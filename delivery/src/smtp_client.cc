// smtp_client.cc — SMTP/LMTP client sessions: EHLO/HELO/LHLO, STARTTLS, then
// transactions MAIL (SIZE, BODY, RET, ENVID), RCPT (NOTIFY, ORCPT), DATA —
// pipelined when offered (RFC 2920) — with RSET between them, and QUIT.
#include "smtp_client.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>

#include <cctype>
#include <cstdlib>
#include <cstring>

namespace mx::delivery {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;

struct Reply {
  int code = 0;
  std::string text;                // all lines joined with a space, code prefix kept once
  std::vector<std::string> lines;  // texts after "NNN-" / "NNN "
};

std::string DefaultEnhanced(int code) {
  if (code >= 200 && code < 300) return "2.0.0";
  if (code >= 400 && code < 500) return "4.0.0";
  return "5.0.0";
}

class Conn {
 public:
  explicit Conn(const asio::strand<asio::any_io_executor>& ex) : socket_(ex), timer_(ex) {}
  ~Conn() { *alive_ = false; }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  awaitable<bool> Connect(const tcp::endpoint& ep, std::chrono::seconds timeout, const std::string& source,
                          std::string* error) {
    boost::system::error_code ec;
    if (!source.empty()) {  // an egress source: bind before connecting
      auto local = asio::ip::make_address(source, ec);
      if (!ec && local.is_v4() != ep.address().is_v4()) {
        *error = "source address " + source + " cannot reach " + ep.address().to_string();
        co_return false;
      }
      if (!ec) socket_.open(ep.protocol(), ec);
      if (!ec) socket_.bind(tcp::endpoint(local, 0), ec);
      if (ec) {
        *error = "cannot bind source address " + source + ": " + ec.message();
        co_return false;
      }
    }
    Arm(timeout);
    co_await socket_.async_connect(ep, asio::redirect_error(use_awaitable, ec));
    timer_.cancel();
    if (ec) {
      *error = timed_out_ ? "Connection timed out"
                          : (ec == asio::error::connection_refused ? "Connection refused" : ec.message());
      co_return false;
    }
    co_return true;
  }

  // RFC 3207 client side: after "220" to STARTTLS. SNI names the MX host.
  // verify: the certificate must chain to ctx's trust anchors and name sni.
  // tlsa: DANE records the certificate must match instead (RFC 7672).
  awaitable<bool> StartTls(asio::ssl::context& ctx, const std::string& sni, bool verify, const std::vector<Tlsa>& tlsa,
                           std::chrono::seconds timeout, std::string* error) {
    buf_.clear();  // nothing the server sent before the handshake counts after it
    tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, ctx);
    SSL* ssl = tls_->native_handle();
    if (!sni.empty()) SSL_set_tlsext_host_name(ssl, sni.c_str());
    if (!tlsa.empty()) {
      SSL_dane_enable(ssl, sni.c_str());  // DANE-TA(2) also checks the name
      SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
      for (const auto& t : tlsa) {
        SSL_dane_tlsa_add(ssl, t.usage, t.selector, t.mtype, reinterpret_cast<const unsigned char*>(t.data.data()),
                          t.data.size());
      }
      SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
      verify = true;
    } else if (verify) {
      SSL_set1_host(ssl, sni.c_str());
      SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
    }
    Arm(timeout);
    boost::system::error_code ec;
    co_await tls_->async_handshake(asio::ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
    timer_.cancel();
    if (ec) {
      const long v = SSL_get_verify_result(ssl);
      *error = verify && v != X509_V_OK
                   ? std::string("TLS certificate of ") + sni + " not trusted: " + X509_verify_cert_error_string(v)
                   : "TLS handshake failed: " + ec.message();
      co_return false;
    }
    co_return true;
  }
  std::string TlsDescription() const {
    if (!tls_) return {};
    const SSL* ssl = tls_->native_handle();
    return std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
  }

  awaitable<bool> Read(Reply* r, std::chrono::seconds timeout) {
    r->code = 0;
    r->lines.clear();
    for (;;) {
      auto nl = buf_.find('\n');
      while (nl == std::string::npos) {
        if (buf_.size() > size_t{64} * 1024) co_return false;  // garbage without end
        Arm(timeout);
        char tmp[4096];
        boost::system::error_code ec;
        size_t n = tls_ ? co_await tls_->async_read_some(asio::buffer(tmp), asio::redirect_error(use_awaitable, ec))
                        : co_await socket_.async_read_some(asio::buffer(tmp), asio::redirect_error(use_awaitable, ec));
        timer_.cancel();
        if (ec) co_return false;
        buf_.append(tmp, n);
        nl = buf_.find('\n');
      }
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
          !std::isdigit(static_cast<unsigned char>(line[1])) || !std::isdigit(static_cast<unsigned char>(line[2]))) {
        co_return false;  // not SMTP
      }
      int code = std::stoi(line.substr(0, 3));
      r->code = code;
      r->lines.push_back(line.size() > 4 ? line.substr(4) : "");
      if (line.size() == 3 || line[3] == ' ') break;
    }
    r->text = std::to_string(r->code);
    for (const auto& l : r->lines) r->text += " " + l;
    co_return true;
  }

  awaitable<bool> Write(const std::string& data, std::chrono::seconds timeout) {
    Arm(timeout);
    boost::system::error_code ec;
    if (tls_) {
      co_await asio::async_write(*tls_, asio::buffer(data), asio::redirect_error(use_awaitable, ec));
    } else {
      co_await asio::async_write(socket_, asio::buffer(data), asio::redirect_error(use_awaitable, ec));
    }
    timer_.cancel();
    co_return !ec;
  }

  bool timed_out() const { return timed_out_; }
  void Close() {
    boost::system::error_code ec;
    socket_.close(ec);
  }

 private:
  // Closes the socket if the operation outlives timeout.
  // The handler may run after the operation finished and even after this Conn
  // is gone (the expiry raced the completion): it checks `alive` first.
  void Arm(std::chrono::seconds timeout) {
    timer_.expires_after(timeout);
    timer_.async_wait([this, alive = alive_](const boost::system::error_code& ec) {
      if (!ec && *alive) {
        timed_out_ = true;
        boost::system::error_code ignored;
        socket_.cancel(ignored);
      }
    });
  }

  tcp::socket socket_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  asio::steady_timer timer_;
  std::string buf_;
  bool timed_out_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

RcptOutcome FromReply(const Reply& r) {
  RcptOutcome o;
  o.reply = r.text;
  std::string first = r.lines.empty() ? "" : r.lines.back();
  o.dsn_status = EnhancedCode(first);
  if (o.dsn_status.empty()) o.dsn_status = DefaultEnhanced(r.code);
  o.outcome = r.code < 300 ? v1::OUTCOME_DELIVERED : r.code < 500 ? v1::OUTCOME_DEFERRED : v1::OUTCOME_BOUNCED;
  return o;
}

RcptOutcome Local(v1::Outcome outcome, const std::string& dsn, const std::string& text) {
  return RcptOutcome{outcome, text, dsn};
}

}  // namespace

std::string EnhancedCode(std::string_view t) {
  // class "." subject(1-3 digits) "." detail(1-3 digits)
  if (t.size() < 5 || (t[0] != '2' && t[0] != '4' && t[0] != '5') || t[1] != '.') return "";
  size_t i = 2, d = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i])) && d < 3) ++i, ++d;
  if (d == 0 || i >= t.size() || t[i] != '.') return "";
  size_t j = i + 1;
  d = 0;
  while (j < t.size() && std::isdigit(static_cast<unsigned char>(t[j])) && d < 3) ++j, ++d;
  if (d == 0 || (j < t.size() && t[j] != ' ')) return "";
  return std::string(t.substr(0, j));
}

std::string DotStuff(std::string_view body) {
  std::string out;
  out.reserve(body.size() + body.size() / 64 + 8);
  // Line by line (memchr finds the ends), not byte by byte: a line that
  // starts with '.' gets one more.
  size_t pos = 0;
  while (pos < body.size()) {
    if (body[pos] == '.') out.push_back('.');
    const void* nl = std::memchr(body.data() + pos, '\n', body.size() - pos);
    const size_t end = nl ? static_cast<size_t>(static_cast<const char*>(nl) - body.data()) + 1 : body.size();
    out.append(body.data() + pos, end - pos);
    pos = end;
  }
  if (!out.empty() && out.back() != '\n') out += "\r\n";
  out += ".\r\n";
  return out;
}

// NotifyBits → "SUCCESS,FAILURE,DELAY" or "NEVER".
std::string NotifyParam(uint32_t bits) {
  if (bits & v1::NOTIFY_NEVER) return "NEVER";
  std::string out;
  for (auto [bit, name] : {std::pair{v1::NOTIFY_SUCCESS, "SUCCESS"}, std::pair{v1::NOTIFY_FAILURE, "FAILURE"},
                           std::pair{v1::NOTIFY_DELAY, "DELAY"}}) {
    if (bits & bit) out += (out.empty() ? "" : ",") + std::string(name);
  }
  return out;
}

namespace {

class Session final : public SmtpSession {
 public:
  Session(const asio::strand<asio::any_io_executor>& strand, const SmtpClientConfig& config)
      : strand_(strand), config_(config), c_(strand) {}
  ~Session() override { c_.Close(); }

  // Connect, greeting, EHLO/HELO/LHLO, STARTTLS.
  awaitable<bool> Start(const std::string& ip, uint16_t port, const std::string& sni, Attempt* a) {
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(ip, ec);
    if (ec) {
      a->try_next = true;
      a->error = "bad address " + ip;
      co_return false;
    }
    if (!co_await c_.Connect(tcp::endpoint(addr, port), config_.connect_timeout, config_.source_address, &a->error)) {
      a->try_next = true;
      co_return false;
    }
    Reply r;
    if (!co_await c_.Read(&r, config_.greeting_timeout)) co_return Lost(a, "greeting");
    if (r.code != 220) co_return Refused(a, r.text);
    if (!co_await Hello(&r)) co_return Lost(a, config_.lmtp ? "LHLO" : "EHLO");
    if (r.code != 250) co_return Refused(a, r.text);
    using Tls = SmtpClientConfig::Tls;
    if (config_.tls == Tls::kEncrypt && !starttls_) {
      co_return Refused(a, "TLS is required, but the host did not offer STARTTLS");
    }
    if (config_.tls != Tls::kNone && starttls_ && config_.tls_context) {
      if (!co_await c_.Write("STARTTLS\r\n", config_.command_timeout)) co_return Lost(a, "STARTTLS");
      if (!co_await c_.Read(&r, config_.command_timeout)) co_return Lost(a, "STARTTLS");
      if (r.code != 220) {
        if (config_.tls == Tls::kEncrypt) co_return Refused(a, "TLS is required, but STARTTLS was refused: " + r.text);
      } else {
        if (!co_await c_.StartTls(*config_.tls_context, sni, config_.verify, config_.tlsa, config_.command_timeout,
                                  &a->error)) {
          a->try_next = true;
          a->tls_failed = true;
          broken_ = true;
          c_.Close();
          co_return false;
        }
        tls_ = c_.TlsDescription();
        // RFC 3207 4.2: everything learned before TLS is forgotten; EHLO again.
        if (!co_await Hello(&r)) co_return Lost(a, "EHLO");
        if (r.code != 250) co_return Refused(a, r.text);
      }
    }
    co_return true;
  }

  awaitable<Attempt> Send(const v1::Envelope& envelope, const std::string& body,
                          const std::vector<ClientRcpt>& rcpts) override {
    Attempt a;
    a.tls = tls_;
    if (!usable()) {
      a.try_next = true;
      a.error = "connection already closed";
      co_return a;
    }
    // RFC 1870: a message larger than the peer's declared maximum can never go
    // there; bounce instead of sending it (sendmail: 552 5.3.4).
    if (size_ok_ && peer_max_ > 0 && body.size() > peer_max_) {
      auto o = Local(v1::OUTCOME_BOUNCED, "5.3.4",
                     "552 5.3.4 Message size (" + std::to_string(body.size()) + ") exceeds the remote limit (" +
                         std::to_string(peer_max_) + ")");
      a.rcpts.assign(rcpts.size(), o);
      co_return a;
    }
    ++transactions_;
    std::string mail = "MAIL FROM:<" + envelope.sender() + ">";
    if (esmtp_ && size_ok_) mail += " SIZE=" + std::to_string(body.size());
    if (esmtp_ && eightbit_ && envelope.body_type() == "8BITMIME") mail += " BODY=8BITMIME";
    // RFC 3461: the DSN request travels on when the next hop can honour it.
    a.dsn_forwarded = esmtp_ && dsn_;
    if (a.dsn_forwarded && !envelope.ret().empty()) mail += " RET=" + envelope.ret();
    if (a.dsn_forwarded && !envelope.envid().empty()) mail += " ENVID=" + envelope.envid();
    mail += "\r\n";
    std::vector<std::string> rcpt_lines;
    for (const auto& rc : rcpts) {
      std::string line = "RCPT TO:<" + rc.address + ">";
      if (a.dsn_forwarded && rc.notify) line += " NOTIFY=" + NotifyParam(rc.notify);
      if (a.dsn_forwarded && !rc.orcpt.empty()) line += " ORCPT=" + rc.orcpt;
      rcpt_lines.push_back(line + "\r\n");
    }
    // RFC 2920: MAIL, every RCPT and DATA in one write, replies read in order.
    if (pipelining_) {
      for (const auto& l : rcpt_lines) mail += l;
      mail += "DATA\r\n";
    }
    Reply r;
    if (!co_await c_.Write(mail, config_.command_timeout)) co_return LostTx(a, "MAIL");
    if (!co_await ReadReply(&r, config_.command_timeout)) co_return LostTx(a, "MAIL");
    const Reply mail_reply = r;
    if (!pipelining_ && r.code >= 300) co_return MailRefused(a, mail_reply, rcpts.size());
    a.rcpts.resize(rcpts.size());
    size_t accepted = 0;
    for (size_t i = 0; i < rcpts.size(); ++i) {
      if (!pipelining_ && !co_await c_.Write(rcpt_lines[i], config_.command_timeout)) co_return LostTx(a, "RCPT");
      if (!co_await ReadReply(&r, config_.command_timeout)) co_return LostTx(a, "RCPT");
      a.rcpts[i] = FromReply(r);
      if (r.code < 300) {
        a.rcpts[i].outcome = v1::OUTCOME_UNSPECIFIED;  // decided by the reply to DATA
        ++accepted;
      }
    }
    Reply data_reply;
    const bool data_sent = pipelining_ || accepted > 0;
    if (!pipelining_ && accepted > 0 && !co_await c_.Write("DATA\r\n", config_.command_timeout)) {
      co_return LostData(a, "lost connection after DATA command");
    }
    if (data_sent && !co_await ReadReply(&data_reply, config_.command_timeout)) {
      co_return LostData(a, "lost connection after DATA command");
    }
    if (mail_reply.code >= 300) {  // pipelined: the RCPTs and DATA were answered 503
      if (data_reply.code == 354 && !co_await FinishEmptyData()) broken_ = true;
      a.rcpts.clear();
      co_return MailRefused(a, mail_reply, rcpts.size());
    }
    if (accepted == 0) {
      // RFC 2920 3.1: a DATA accepted despite no valid recipient gets a lone dot.
      if (data_reply.code == 354 && !co_await FinishEmptyData()) broken_ = true;
      co_return a;
    }
    if (data_reply.code != 354) {
      FinishAccepted(&a, FromReply(data_reply).outcome == v1::OUTCOME_DELIVERED
                             ? Local(v1::OUTCOME_DEFERRED, "4.5.0", "unexpected reply to DATA: " + data_reply.text)
                             : FromReply(data_reply));
      co_return a;
    }
    if (!co_await c_.Write(DotStuff(body), config_.data_timeout)) {
      co_return LostData(a, "lost connection while sending message");
    }
    // No reply to the final dot means we do not know: defer (never assume delivered).
    const char* no_reply =
        c_.timed_out() ? "timeout waiting for reply to end of data" : "lost connection after end of data";
    if (!config_.lmtp) {
      if (!co_await ReadReply(&r, config_.data_timeout)) co_return LostData(a, no_reply);
      FinishAccepted(&a, FromReply(r));
    } else {
      // RFC 2033 4.2: one reply per accepted recipient, in RCPT order.
      for (auto& x : a.rcpts) {
        if (x.outcome != v1::OUTCOME_UNSPECIFIED) continue;
        if (!co_await ReadReply(&r, config_.data_timeout)) co_return LostData(a, no_reply);
        x = FromReply(r);
      }
    }
    a.bytes = body.size();
    co_return a;
  }

  awaitable<bool> Reset() override {
    if (!usable()) co_return false;
    Reply r;
    if (!co_await c_.Write("RSET\r\n", config_.command_timeout) || !co_await ReadReply(&r, config_.command_timeout) ||
        r.code != 250) {
      broken_ = true;
      c_.Close();
      co_return false;
    }
    co_return true;
  }

  awaitable<void> Quit() override {
    if (!broken_) {
      broken_ = true;
      Reply bye;
      if (co_await c_.Write("QUIT\r\n", config_.command_timeout)) co_await c_.Read(&bye, std::chrono::seconds(5));
    }
    c_.Close();
  }

  bool usable() const override { return !broken_ && !closing_; }
  uint32_t transactions() const override { return transactions_; }
  const std::string& tls() const override { return tls_; }
  asio::strand<asio::any_io_executor> strand() const override { return strand_; }

 private:
  // EHLO (HELO if refused) or LHLO; learns the extensions from a 250.
  awaitable<bool> Hello(Reply* r) {
    const std::string verb = config_.lmtp ? "LHLO " : "EHLO ";
    if (!co_await c_.Write(verb + config_.helo_name + "\r\n", config_.command_timeout)) co_return false;
    if (!co_await ReadReply(r, config_.command_timeout)) co_return false;
    if (r->code == 250) {
      esmtp_ = true;
      Features(*r);
      co_return true;
    }
    if (config_.lmtp || !usable()) co_return true;  // the caller reports the refusal
    esmtp_ = false;
    Features(Reply{});
    if (!co_await c_.Write("HELO " + config_.helo_name + "\r\n", config_.command_timeout)) co_return false;
    co_return co_await ReadReply(r, config_.command_timeout);
  }

  void Features(const Reply& ehlo) {
    size_ok_ = eightbit_ = dsn_ = starttls_ = pipelining_ = false;
    peer_max_ = 0;
    for (size_t i = 1; i < ehlo.lines.size(); ++i) {
      std::string kw = ehlo.lines[i];
      for (auto& ch : kw) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      if (kw.rfind("SIZE", 0) == 0 && (kw.size() == 4 || kw[4] == ' ')) {
        size_ok_ = true;
        if (kw.size() > 5) peer_max_ = std::strtoull(kw.c_str() + 5, nullptr, 10);
      }
      if (kw == "8BITMIME") eightbit_ = true;
      if (kw == "DSN") dsn_ = true;
      if (kw == "STARTTLS") starttls_ = true;
      if (kw == "PIPELINING") pipelining_ = true;
    }
  }

  // A reply; 421 means the server is closing the session (RFC 5321 3.8).
  awaitable<bool> ReadReply(Reply* r, std::chrono::seconds timeout) {
    bool ok = co_await c_.Read(r, timeout);
    if (!ok) broken_ = true;
    if (ok && r->code == 421) closing_ = true;
    co_return ok;
  }

  awaitable<bool> FinishEmptyData() {
    Reply r;
    co_return co_await c_.Write(".\r\n", config_.data_timeout) && co_await ReadReply(&r, config_.data_timeout);
  }

  bool Lost(Attempt* a, const char* stage) {
    a->try_next = true;
    a->error = std::string(c_.timed_out() ? "timeout waiting for " : "lost connection after ") + stage;
    broken_ = true;
    c_.Close();
    return false;
  }
  bool Refused(Attempt* a, const std::string& why) {
    a->try_next = true;
    a->error = why;
    closing_ = true;  // Open QUITs
    return false;
  }
  Attempt LostTx(Attempt a, const char* stage) {
    Lost(&a, stage);
    a.rcpts.clear();
    return a;
  }
  // The connection broke after recipients were accepted: they are deferred.
  Attempt LostData(Attempt a, const std::string& why) {
    broken_ = true;
    c_.Close();
    FinishAccepted(&a, Local(v1::OUTCOME_DEFERRED, "4.4.2", why));
    return a;
  }
  static void FinishAccepted(Attempt* a, const RcptOutcome& o) {
    for (auto& x : a->rcpts) {
      if (x.outcome == v1::OUTCOME_UNSPECIFIED) x = o;
    }
  }
  // 4xx to MAIL: the host cannot take mail now, try the next one; 5xx: the
  // sender is refused there, every recipient bounces.
  Attempt MailRefused(Attempt a, const Reply& r, size_t n) {
    if (r.code < 500) {
      a.try_next = true;
      a.error = r.text;
      closing_ = true;
      return a;
    }
    a.rcpts.assign(n, FromReply(r));
    return a;
  }

  asio::strand<asio::any_io_executor> strand_;
  SmtpClientConfig config_;
  Conn c_;
  bool esmtp_ = true, size_ok_ = false, eightbit_ = false, dsn_ = false, starttls_ = false, pipelining_ = false;
  uint64_t peer_max_ = 0;  // the peer's SIZE limit (RFC 1870), 0 = none given
  bool broken_ = false;    // the connection is gone (I/O error, timeout)
  bool closing_ = false;   // still open, but only QUIT may follow (421, refusal)
  uint32_t transactions_ = 0;
  std::string tls_;
};

}  // namespace

awaitable<std::unique_ptr<SmtpSession>> SmtpSession::Open(asio::strand<asio::any_io_executor> strand, std::string ip,
                                                          uint16_t port, const SmtpClientConfig& config,
                                                          std::string sni, Attempt* failure) {
  auto s = std::make_unique<Session>(strand, config);
  if (!co_await s->Start(ip, port, sni, failure)) {
    co_await s->Quit();
    co_return nullptr;
  }
  co_return s;
}

}  // namespace mx::delivery
