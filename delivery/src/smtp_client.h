// smtp_client.h — an SMTP or LMTP client session to one host address
// (Boost.Asio coroutines). A session is opened once (connect, greeting,
// EHLO/LHLO, STARTTLS) and then carries one or more mail transactions, with
// RSET between them, so the worker's connection cache can reuse it.
// Timeouts follow RFC 5321 4.5.3.2 via the config.
#pragma once

#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/strand.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "mx/delivery/resolver.h"
#include "mx/v1/queue.pb.h"

namespace mx::delivery {

struct SmtpClientConfig {
  std::string helo_name = "localhost";
  std::string source_address;  // bind outgoing connections to it (an egress source); "" any
  bool lmtp = false;           // RFC 2033: LHLO, one reply per recipient after the final dot
  // STARTTLS (Postfix smtp_tls_security_level): kNone never, kMay when the
  // peer offers it (a failed handshake is retried in the clear by the
  // caller), kEncrypt always (a peer without STARTTLS is a failed host).
  // Certificates are not verified (as Postfix's may/encrypt) unless verify.
  enum class Tls { kNone, kMay, kEncrypt } tls = Tls::kMay;
  std::shared_ptr<boost::asio::ssl::context> tls_context;  // client context, set when tls != kNone
  // With kEncrypt (MTA-STS enforce): the certificate must chain to the trust
  // anchors of tls_context and name the host (the SNI name); else the host
  // fails like one without STARTTLS.
  bool verify = false;
  // DANE (RFC 7672): with kEncrypt, the certificate must match one of these
  // (DANE-TA(2) or DANE-EE(3) records; tls_context must be DANE-enabled).
  std::vector<Tlsa> tlsa;
  std::chrono::seconds connect_timeout{30};
  std::chrono::seconds greeting_timeout{300};
  std::chrono::seconds command_timeout{300};
  std::chrono::seconds data_timeout{600};
};

struct RcptOutcome {
  v1::Outcome outcome = v1::OUTCOME_DEFERRED;
  std::string reply;       // e.g. "250 2.0.0 Ok: queued as X"
  std::string dsn_status;  // enhanced status code
};

// A recipient as the client sends it: DSN parameters go out only when the
// peer announced DSN (RFC 3461 4.1/4.2).
struct ClientRcpt {
  std::string address;
  uint32_t notify = 0;  // v1::NotifyBits; 0 = not given
  std::string orcpt;    // "rfc822;xtext" or ""
};

struct Attempt {
  // The host could not take the transaction (connect failure, 4xx/5xx greeting,
  // 4xx to MAIL, lost connection before any recipient answer): try the next host.
  bool try_next = false;
  std::string error;               // why, when try_next
  std::vector<RcptOutcome> rcpts;  // one per recipient, when !try_next
  uint64_t bytes = 0;              // message bytes sent
  bool dsn_forwarded = false;      // the peer announced DSN and got NOTIFY/ORCPT/RET/ENVID
  std::string tls;                 // "TLSv1.3 TLS_AES_256_GCM_SHA384" when the session was encrypted
  bool tls_failed = false;         // STARTTLS was tried and the handshake failed (retry in the clear)
  bool throttled = false;          // (worker) a delivery limit held it back; error says which
};

// Parses an enhanced status code ("5.1.1") at the start of text; "" if none.
std::string EnhancedCode(std::string_view text);
// Adds the SMTP transparency dot to lines starting with '.', ensures a final CRLF,
// and appends the ".\r\n" terminator.
std::string DotStuff(std::string_view body);

class SmtpSession {
 public:
  virtual ~SmtpSession() = default;

  // Connects to ip:port, reads the greeting and introduces itself (EHLO,
  // HELO when EHLO is refused; LHLO for LMTP), then STARTTLS as the config
  // says. The session lives on its own strand: every later call must run
  // there (see Run). On failure returns null and fills *failure (try_next,
  // error, tls_failed).
  static boost::asio::awaitable<std::unique_ptr<SmtpSession>> Open(
      boost::asio::strand<boost::asio::any_io_executor> strand, std::string ip, uint16_t port,
      const SmtpClientConfig& config, std::string sni, Attempt* failure);

  // One mail transaction: MAIL, RCPT..., DATA (pipelined when the peer
  // offers PIPELINING). try_next in the result means no recipient got an
  // answer; the session is then no longer usable.
  virtual boost::asio::awaitable<Attempt> Send(const v1::Envelope& envelope, const std::string& body,
                                               const std::vector<ClientRcpt>& rcpts) = 0;
  // RSET before the next transaction on a cached session: false when the
  // peer is gone or refuses (the session is then closed).
  virtual boost::asio::awaitable<bool> Reset() = 0;
  // QUIT and close; harmless on a broken session.
  virtual boost::asio::awaitable<void> Quit() = 0;

  // Whether another transaction may follow (no I/O error, no 421, no timeout).
  virtual bool usable() const = 0;
  virtual uint32_t transactions() const = 0;
  virtual const std::string& tls() const = 0;
  virtual boost::asio::strand<boost::asio::any_io_executor> strand() const = 0;
};

}  // namespace mx::delivery
