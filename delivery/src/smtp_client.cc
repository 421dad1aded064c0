// smtp_client.cc — SMTP client transaction: EHLO/HELO, MAIL (SIZE, BODY, RET, ENVID),
// RCPT (NOTIFY, ORCPT), DATA, QUIT.
#include "mx/delivery/smtp_client.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>

#include <cctype>
#include <cstdlib>

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
  explicit Conn(asio::any_io_executor ex) : socket_(ex), timer_(ex) {}
  ~Conn() { *alive_ = false; }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  awaitable<bool> Connect(const tcp::endpoint& ep, std::chrono::seconds timeout, std::string* error) {
    Arm(timeout);
    boost::system::error_code ec;
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
  awaitable<bool> StartTls(asio::ssl::context& ctx, const std::string& sni, std::chrono::seconds timeout,
                           std::string* error) {
    buf_.clear();  // nothing the server sent before the handshake counts after it
    tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, ctx);
    if (!sni.empty()) SSL_set_tlsext_host_name(tls_->native_handle(), sni.c_str());
    Arm(timeout);
    boost::system::error_code ec;
    co_await tls_->async_handshake(asio::ssl::stream_base::client, asio::redirect_error(use_awaitable, ec));
    timer_.cancel();
    if (ec) {
      *error = "TLS handshake failed: " + ec.message();
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
        if (buf_.size() > 64 * 1024) co_return false;  // garbage without end
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
  bool line_start = true;
  for (char c : body) {
    if (line_start && c == '.') out.push_back('.');
    out.push_back(c);
    line_start = c == '\n';
  }
  if (!out.empty() && !line_start) out += "\r\n";
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

awaitable<Attempt> SmtpTransaction(asio::any_io_executor ex, std::string ip, uint16_t port,
                                   const SmtpClientConfig& config, const v1::Envelope& envelope,
                                   const std::string& body, const std::vector<ClientRcpt>& rcpts, std::string sni) {
  Attempt a;
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(ip, ec);
  if (ec) {
    a.try_next = true;
    a.error = "bad address " + ip;
    co_return a;
  }
  Conn c(ex);
  if (!co_await c.Connect(tcp::endpoint(addr, port), config.connect_timeout, &a.error)) {
    a.try_next = true;
    co_return a;
  }
  auto lost = [&](const char* stage) {
    a.try_next = true;
    a.error = std::string(c.timed_out() ? "timeout waiting for " : "lost connection after ") + stage;
    c.Close();
    return a;
  };
  Reply r;
  if (!co_await c.Read(&r, config.greeting_timeout)) co_return lost("greeting");
  if (r.code != 220) {
    a.try_next = true;
    a.error = r.text;
    co_await c.Write("QUIT\r\n", config.command_timeout);
    c.Close();
    co_return a;
  }
  bool esmtp = true, size_ok = false, eightbit = false, dsn = false, starttls = false;
  uint64_t peer_max = 0;  // the peer's SIZE limit (RFC 1870), 0 = none given
  auto features = [&](const Reply& ehlo) {
    size_ok = eightbit = dsn = starttls = false;
    peer_max = 0;
    for (size_t i = 1; i < ehlo.lines.size(); ++i) {
      std::string kw = ehlo.lines[i];
      for (auto& ch : kw) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      if (kw.rfind("SIZE", 0) == 0 && (kw.size() == 4 || kw[4] == ' ')) {
        size_ok = true;
        if (kw.size() > 5) peer_max = std::strtoull(kw.c_str() + 5, nullptr, 10);
      }
      if (kw == "8BITMIME") eightbit = true;
      if (kw == "DSN") dsn = true;
      if (kw == "STARTTLS") starttls = true;
    }
  };
  if (!co_await c.Write("EHLO " + config.helo_name + "\r\n", config.command_timeout)) co_return lost("EHLO");
  if (!co_await c.Read(&r, config.command_timeout)) co_return lost("EHLO");
  if (r.code != 250) {
    esmtp = false;
    if (!co_await c.Write("HELO " + config.helo_name + "\r\n", config.command_timeout)) co_return lost("HELO");
    if (!co_await c.Read(&r, config.command_timeout)) co_return lost("HELO");
    if (r.code != 250) {
      a.try_next = true;
      a.error = r.text;
      c.Close();
      co_return a;
    }
  } else {
    features(r);
  }
  using Tls = SmtpClientConfig::Tls;
  if (config.tls == Tls::kEncrypt && !starttls) {
    a.try_next = true;
    a.error = "TLS is required, but the host did not offer STARTTLS";
    co_await c.Write("QUIT\r\n", config.command_timeout);
    c.Close();
    co_return a;
  }
  if (config.tls != Tls::kNone && starttls && config.tls_context) {
    if (!co_await c.Write("STARTTLS\r\n", config.command_timeout)) co_return lost("STARTTLS");
    if (!co_await c.Read(&r, config.command_timeout)) co_return lost("STARTTLS");
    if (r.code != 220) {
      if (config.tls == Tls::kEncrypt) {
        a.try_next = true;
        a.error = "TLS is required, but STARTTLS was refused: " + r.text;
        co_await c.Write("QUIT\r\n", config.command_timeout);
        c.Close();
        co_return a;
      }
    } else {
      if (!co_await c.StartTls(*config.tls_context, sni, config.command_timeout, &a.error)) {
        a.try_next = true;
        a.tls_failed = true;
        c.Close();
        co_return a;
      }
      a.tls = c.TlsDescription();
      // RFC 3207 4.2: everything learned before TLS is forgotten; EHLO again.
      if (!co_await c.Write("EHLO " + config.helo_name + "\r\n", config.command_timeout)) co_return lost("EHLO");
      if (!co_await c.Read(&r, config.command_timeout)) co_return lost("EHLO");
      if (r.code != 250) {
        a.try_next = true;
        a.error = r.text;
        c.Close();
        co_return a;
      }
      features(r);
    }
  }
  // RFC 1870: a message larger than the peer's declared maximum can never go
  // there; bounce instead of sending it (sendmail: 552 5.3.4).
  if (size_ok && peer_max > 0 && body.size() > peer_max) {
    auto o = Local(v1::OUTCOME_BOUNCED, "5.3.4",
                   "552 5.3.4 Message size (" + std::to_string(body.size()) + ") exceeds the remote limit (" +
                       std::to_string(peer_max) + ")");
    for (size_t i = 0; i < rcpts.size(); ++i) a.rcpts.push_back(o);
    co_await c.Write("QUIT\r\n", config.command_timeout);
    c.Close();
    co_return a;
  }
  std::string mail = "MAIL FROM:<" + envelope.sender() + ">";
  if (esmtp && size_ok) mail += " SIZE=" + std::to_string(body.size());
  if (esmtp && eightbit && envelope.body_type() == "8BITMIME") mail += " BODY=8BITMIME";
  // RFC 3461: the DSN request travels on when the next hop can honour it.
  a.dsn_forwarded = esmtp && dsn;
  if (a.dsn_forwarded && !envelope.ret().empty()) mail += " RET=" + envelope.ret();
  if (a.dsn_forwarded && !envelope.envid().empty()) mail += " ENVID=" + envelope.envid();
  if (!co_await c.Write(mail + "\r\n", config.command_timeout)) co_return lost("MAIL");
  if (!co_await c.Read(&r, config.command_timeout)) co_return lost("MAIL");
  if (r.code >= 400 && r.code < 500) {
    a.try_next = true;
    a.error = r.text;
    co_await c.Write("QUIT\r\n", config.command_timeout);
    c.Close();
    co_return a;
  }
  if (r.code >= 500) {  // the sender is refused: every recipient bounces
    for (size_t i = 0; i < rcpts.size(); ++i) a.rcpts.push_back(FromReply(r));
    co_await c.Write("QUIT\r\n", config.command_timeout);
    c.Close();
    co_return a;
  }
  a.rcpts.resize(rcpts.size());
  size_t accepted = 0;
  for (size_t i = 0; i < rcpts.size(); ++i) {
    std::string rcpt = "RCPT TO:<" + rcpts[i].address + ">";
    if (a.dsn_forwarded && rcpts[i].notify) rcpt += " NOTIFY=" + NotifyParam(rcpts[i].notify);
    if (a.dsn_forwarded && !rcpts[i].orcpt.empty()) rcpt += " ORCPT=" + rcpts[i].orcpt;
    if (!co_await c.Write(rcpt + "\r\n", config.command_timeout)) co_return lost("RCPT");
    if (!co_await c.Read(&r, config.command_timeout)) co_return lost("RCPT");
    a.rcpts[i] = FromReply(r);
    if (r.code < 300) {
      a.rcpts[i].outcome = v1::OUTCOME_UNSPECIFIED;  // decided by the reply to DATA
      ++accepted;
    }
  }
  auto finish_accepted = [&](const RcptOutcome& o) {
    for (auto& x : a.rcpts) {
      if (x.outcome == v1::OUTCOME_UNSPECIFIED) x = o;
    }
  };
  if (accepted > 0) {
    if (!co_await c.Write("DATA\r\n", config.command_timeout) || !co_await c.Read(&r, config.command_timeout)) {
      finish_accepted(Local(v1::OUTCOME_DEFERRED, "4.4.2", "lost connection after DATA command"));
      c.Close();
      co_return a;
    }
    if (r.code != 354) {
      finish_accepted(FromReply(r).outcome == v1::OUTCOME_DELIVERED
                          ? Local(v1::OUTCOME_DEFERRED, "4.5.0", "unexpected reply to DATA: " + r.text)
                          : FromReply(r));
    } else {
      std::string data = DotStuff(body);
      if (!co_await c.Write(data, config.data_timeout)) {
        finish_accepted(Local(v1::OUTCOME_DEFERRED, "4.4.2", "lost connection while sending message"));
        c.Close();
        co_return a;
      }
      // No reply to the final dot means we do not know: defer (never assume delivered).
      if (!co_await c.Read(&r, config.data_timeout)) {
        finish_accepted(
            Local(v1::OUTCOME_DEFERRED, "4.4.2",
                  c.timed_out() ? "timeout waiting for reply to end of data" : "lost connection after end of data"));
        c.Close();
        co_return a;
      }
      a.bytes = body.size();
      finish_accepted(FromReply(r));
    }
  }
  co_await c.Write("QUIT\r\n", config.command_timeout);
  Reply bye;
  co_await c.Read(&bye, std::chrono::seconds(5));
  c.Close();
  co_return a;
}

}  // namespace mx::delivery
