// session.h — one SMTP server dialogue as a state machine without I/O.
//
// The driver (server.cc, or a test) feeds raw input lines; the session appends
// replies to an output buffer and answers with a Step saying what the driver
// must do next: enqueue a finished message, start TLS, verify AUTH
// credentials, start a queue run (ETRN) or close. The driver reports the
// outcome with the matching On*() call, which produces the final reply.
// Keeping I/O out makes every dialogue testable from golden files. Policy
// questions go to the Policy the session was started with.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "mx/common/result.h"
#include "mx/ingress/policy.h"
#include "mx/v1/types.pb.h"
#include "suppressions.h"

namespace mx::ingress {

// What the driver offers this session (fixed for the session's life).
struct SessionOptions {
  std::string node_name = "mx";
  bool tls_available = false;                    // a certificate is loaded: STARTTLS offered
  bool auth_available = false;                   // a users file is loaded: AUTH possible
  bool queue_only = false;                       // QueueLA: accepted mail waits for a queue run
  bool storage_low = false;                      // the queue refused for lack of disk lately
  uint32_t max_junk_commands = 100;              // NOOP/RSET/VRFY/EXPN/HELP/ETRN before they count as errors
  const SuppressionSet* suppressions = nullptr;  // RCPT to these is refused (null: no check)
  // The node is draining (mxctl drain, a rolling restart): a session that
  // starts a new transaction gets 421 and ends, so open connections finish
  // what they are sending and go (null: never).
  const std::atomic<bool>* draining = nullptr;
};

class SessionObserver {
 public:
  virtual ~SessionObserver() = default;
  virtual void OnCommand(std::string_view verb) = 0;
  virtual void OnReject(RejectReason reason, int code) = 0;
  virtual void OnAuth(bool ok) = 0;
  virtual void OnDiscard() = 0;
  // A DKIM signature made (ok) or a message refused because signing failed.
  virtual void OnDkim(std::string_view /*algorithm*/, bool /*ok*/) {}
};

class Session {
 public:
  enum class Step {
    kContinue,      // keep feeding lines
    kEnqueue,       // a message is complete: TakeMessage(), enqueue, OnEnqueued()
    kDiscard,       // a message was accepted for discarding: nothing to enqueue, keep going
    kStartTls,      // flush output, drop buffered input, handshake, OnTlsStarted()
    kAuthenticate,  // verify auth_user()/auth_password(), then OnAuthResult()
    kEtrn,          // start a queue run for etrn_domain(), then OnEtrnResult()
    kClose,         // flush output, then close the connection
  };

  Session(std::shared_ptr<const Policy> policy, SessionOptions options, ClientInfo client, const Clock& clock,
          QidGenerator& qids, SessionObserver* observer = nullptr);

  // Appends the 220 greeting. connect: the connect-stage verdict (access
  // Connect:, mynetworks, DNSBL) from Policy::CheckConnect and the DNSBL; a
  // rejection is answered at every MAIL so the client sees its exact text.
  void Start(const Verdict& connect);
  // One input line including its terminator ("\r\n", or a bare "\n"), or a
  // fragment of an over-long line with partial=true (the rest follows).
  Step OnLine(std::string_view raw, bool partial = false);
  // The message DATA produced (valid after Step::kEnqueue).
  v1::NewMessage TakeMessage();
  // Reports the enqueue outcome; appends the reply to DATA.
  Step OnEnqueued(const Status& status);
  // TLS is up (RFC 3207: the client starts over with EHLO).
  void OnTlsStarted();
  // The verified AUTH outcome.
  Step OnAuthResult(bool ok);
  // AUTH refused unverified: too many failures lately from this client's
  // address (by_address: 421, the session ends) or for this user name (454).
  Step OnAuthThrottled(bool by_address);
  // The ETRN queue run outcome (number of recipients made ready, or error).
  Step OnEtrnResult(const Result<uint64_t>& started);
  // The idle or data timeout fired: appends 421, the driver closes.
  void OnTimeout();

  std::string& output() { return out_; }
  bool in_data() const { return state_ == State::kData; }
  bool tls() const { return tls_; }
  const std::string& last_qid() const { return qid_; }
  const std::string& auth_user() const { return auth_user_; }
  const std::string& client_addr() const { return client_.addr; }
  const std::string& auth_password() const { return auth_password_; }
  const std::string& etrn_domain() const { return etrn_domain_; }
  // The id in this session's log lines: the current queue id.
  const std::string& log_id() const { return qid_; }

 private:
  enum class State { kConnected, kGreeted, kMail, kRcpt, kData, kAuth, kClosed };
  enum class AuthStep { kNone, kPlain, kLoginUser, kLoginPassword };

  struct Rcpt {
    std::string address;  // final (after rewriting)
    std::string orcpt;    // RFC 3461 ORCPT as given, or the original recipient when rewritten
    uint32_t notify = 0;  // v1::NotifyBits
  };

  Step OnCommandLine(std::string_view line);
  Step OnAuthLine(std::string_view line);
  Step OnDataLine(std::string_view raw, bool partial);
  Step OnEhlo(bool esmtp, const std::string& arg);
  Step OnMail(const std::string& arg);
  Step OnRcpt(const std::string& arg);
  Step OnAuth(const std::string& arg);
  Step OnEtrn(const std::string& arg);
  Step OnVrfy(const std::string& arg, bool expn);
  Step Junk();
  Step FinishData();
  Step AuthDecoded(std::string_view decoded);
  void Reply(std::string_view text);
  Step Reject(RejectReason reason, std::string_view reply);
  void ResetTransaction();
  bool Trusted() const { return connect_.kind == Verdict::Kind::kRelay || !auth_id_.empty(); }
  bool AuthOffered() const { return options_.auth_available && (tls_ || policy_->settings().auth_over_plaintext); }
  std::string ReceivedHeader() const;
  std::string Client() const { return client_.name + " [" + client_.addr + "]"; }

  std::shared_ptr<const Policy> policy_;
  const IngressConfig& cfg_;
  SessionOptions options_;
  ClientInfo client_;
  const Clock& clock_;
  QidGenerator& qids_;
  SessionObserver* observer_;
  Verdict connect_;
  State state_ = State::kConnected;
  bool esmtp_ = false;
  bool tls_ = false;
  std::string helo_;
  uint32_t errors_ = 0;
  uint32_t junk_ = 0;
  std::string out_;
  bool discarding_long_line_ = false;

  // AUTH
  AuthStep auth_step_ = AuthStep::kNone;
  std::string auth_mech_;
  std::string auth_user_, auth_password_;  // pending verification
  std::string auth_id_;                    // authenticated identity
  std::string etrn_domain_;

  // transaction
  std::string qid_;
  bool mail_seen_ = false;
  std::string sender_;
  std::string body_type_;
  std::string ret_, envid_;
  bool discard_ = false;
  std::string discard_why_;
  std::vector<Rcpt> rcpts_;
  uint32_t rcpt_commands_ = 0;
  std::string data_;
  bool data_line_start_ = true;
  bool prev_line_crlf_ = true;
  bool too_big_ = false;
  bool bare_eol_ = false;
  uint64_t data_bytes_ = 0;
  v1::NewMessage message_;
  std::string accept_log_;  // maillog line written once the enqueue committed
};

}  // namespace mx::ingress
