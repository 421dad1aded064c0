// session.h — one SMTP server dialogue as a state machine without I/O.
//
// The driver (server.cc, or a test) feeds raw input lines; the session appends
// replies to an output buffer and says when a message is complete. The driver
// then enqueues it and reports the outcome, which produces the final reply to
// DATA. Keeping I/O out makes every dialogue testable from golden files.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mx/common/cidr.h"
#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "mx/common/result.h"
#include "mx/v1/types.pb.h"

namespace mx::ingress {

struct SessionConfig {
  std::string hostname = "localhost";
  std::string greeting = "ESMTP";
  uint64_t max_message_size = 10ULL << 20;
  uint32_t max_recipients = 100;
  uint32_t max_errors = 10;
  CidrList mynetworks;
  std::vector<std::string> relay_domains;  // lower-case
  std::string node_name = "mx";
};

struct ClientInfo {
  std::string addr;  // IP
  std::string name;  // reverse DNS or "unknown"
};

// Why a session rejected something (metrics label; bounded set).
enum class RejectReason {
  kSyntax,
  kSequence,
  kSize,
  kRelay,
  kTooManyRecipients,
  kBareLf,
  kQueue,
  kErrors,
  kUnknownCommand,
  kLineLength
};
const char* RejectReasonName(RejectReason r);

class SessionObserver {
 public:
  virtual ~SessionObserver() = default;
  virtual void OnCommand(std::string_view verb) = 0;
  virtual void OnReject(RejectReason reason, int code) = 0;
};

class Session {
 public:
  enum class Step {
    kContinue,  // keep feeding lines
    kEnqueue,   // a message is complete: TakeMessage(), enqueue, OnEnqueued()
    kClose,     // flush output, then close the connection
  };

  Session(const SessionConfig& config, ClientInfo client, const Clock& clock, QidGenerator& qids,
          SessionObserver* observer = nullptr);

  // Appends the 220 greeting.
  void Start();
  // One input line including its terminator ("\r\n", or a bare "\n"), or a
  // fragment of an over-long line with partial=true (the rest follows).
  Step OnLine(std::string_view raw, bool partial = false);
  // The message DATA produced (valid after Step::kEnqueue).
  v1::NewMessage TakeMessage();
  // Reports the enqueue outcome; appends the reply to DATA.
  Step OnEnqueued(const Status& status);
  // The idle or data timeout fired: appends 421, the driver closes.
  void OnTimeout();

  std::string& output() { return out_; }
  bool in_data() const { return state_ == State::kData; }
  const std::string& last_qid() const { return qid_; }

 private:
  enum class State { kConnected, kGreeted, kMail, kRcpt, kData, kClosed };

  Step OnCommandLine(std::string_view line);
  Step OnDataLine(std::string_view raw, bool partial);
  Step FinishData();
  void Reply(std::string_view text);
  Step Reject(RejectReason reason, std::string_view reply);
  void ResetTransaction();
  bool RelayAllowed(const std::string& rcpt) const;
  std::string ReceivedHeader() const;

  const SessionConfig& config_;
  ClientInfo client_;
  const Clock& clock_;
  QidGenerator& qids_;
  SessionObserver* observer_;
  State state_ = State::kConnected;
  bool esmtp_ = false;
  std::string helo_;
  uint32_t errors_ = 0;
  std::string out_;
  bool discarding_long_line_ = false;

  // transaction
  std::string qid_;
  std::string sender_;
  std::string body_type_;
  std::vector<std::string> rcpts_;
  std::string data_;
  bool data_line_start_ = true;
  bool prev_line_crlf_ = true;
  bool too_big_ = false;
  bool bare_eol_ = false;
  uint64_t data_bytes_ = 0;
  int64_t data_start_us_ = 0;
  v1::NewMessage message_;
  std::string accept_log_;  // maillog line written once the enqueue committed
};

}  // namespace mx::ingress
