// session.cc — the SMTP server dialogue (RFC 5321, 1870, 2920, 3463, 6152).
#include "mx/ingress/session.h"

#include <charconv>

#include "mx/common/address.h"
#include "mx/common/log.h"
#include "mx/common/rfc5322.h"
#include "mx/ingress/smtp_command.h"

namespace mx::ingress {

const char* RejectReasonName(RejectReason r) {
  switch (r) {
    case RejectReason::kSyntax: return "syntax";
    case RejectReason::kSequence: return "sequence";
    case RejectReason::kSize: return "size";
    case RejectReason::kRelay: return "relay";
    case RejectReason::kTooManyRecipients: return "too_many_recipients";
    case RejectReason::kBareLf: return "bare_lf";
    case RejectReason::kQueue: return "queue_unavailable";
    case RejectReason::kErrors: return "error_limit";
    case RejectReason::kUnknownCommand: return "unknown_command";
    case RejectReason::kLineLength: return "line_length";
  }
  return "other";
}

Session::Session(const SessionConfig& config, ClientInfo client, const Clock& clock, QidGenerator& qids,
                 SessionObserver* observer)
    : config_(config), client_(std::move(client)), clock_(clock), qids_(qids), observer_(observer) {}

void Session::Start() {
  Reply("220 " + config_.hostname + " " + config_.greeting);
}

void Session::Reply(std::string_view text) {
  out_.append(text);
  out_.append("\r\n");
}

Session::Step Session::Reject(RejectReason reason, std::string_view reply) {
  Reply(reply);
  int code = 0;
  std::from_chars(reply.data(), reply.data() + std::min<size_t>(3, reply.size()), code);
  if (observer_) observer_->OnReject(reason, code);
  if (++errors_ >= config_.max_errors) {
    Reply("421 4.7.0 " + config_.hostname + " Error: too many errors");
    if (observer_) observer_->OnReject(RejectReason::kErrors, 421);
    log::Info("too many errors after " + std::string(reply.substr(0, 40)) + " from " + client_.name + " [" +
              client_.addr + "]");
    state_ = State::kClosed;
    return Step::kClose;
  }
  return Step::kContinue;
}

void Session::ResetTransaction() {
  qid_.clear();
  sender_.clear();
  body_type_.clear();
  rcpts_.clear();
  data_.clear();
  data_.shrink_to_fit();
  too_big_ = bare_eol_ = false;
  data_bytes_ = 0;
  if (state_ != State::kConnected && state_ != State::kClosed) state_ = State::kGreeted;
}

bool Session::RelayAllowed(const std::string& rcpt) const {
  if (config_.mynetworks.Contains(client_.addr)) return true;
  auto domain = DomainOf(rcpt);
  if (domain.empty() || domain == ToLower(config_.hostname)) return true;  // $j is always local (postmaster)
  for (const auto& d : config_.relay_domains) {
    if (domain == d) return true;
  }
  return false;
}

Session::Step Session::OnLine(std::string_view raw, bool partial) {
  if (state_ == State::kClosed) return Step::kClose;
  if (state_ == State::kData) return OnDataLine(raw, partial);
  if (partial) {
    discarding_long_line_ = true;
    return Step::kContinue;
  }
  if (discarding_long_line_) {
    discarding_long_line_ = false;
    return Reject(RejectReason::kLineLength, "500 5.5.2 Error: line too long");
  }
  while (!raw.empty() && (raw.back() == '\n' || raw.back() == '\r')) raw.remove_suffix(1);
  return OnCommandLine(raw);
}

Session::Step Session::OnCommandLine(std::string_view line) {
  Command cmd = ParseCommand(line);
  if (observer_) observer_->OnCommand(cmd.verb == Verb::kUnknown ? "unknown" : cmd.verb_text);
  switch (cmd.verb) {
    case Verb::kEhlo:
    case Verb::kHelo: {
      if (cmd.arg.empty()) {
        return Reject(RejectReason::kSyntax,
                      cmd.verb == Verb::kEhlo ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname");
      }
      state_ = State::kGreeted;
      ResetTransaction();
      helo_ = cmd.arg;
      esmtp_ = cmd.verb == Verb::kEhlo;
      if (!esmtp_) {
        Reply("250 " + config_.hostname);
      } else {
        Reply("250-" + config_.hostname);
        Reply("250-PIPELINING");
        Reply("250-SIZE " + std::to_string(config_.max_message_size));
        Reply("250-8BITMIME");
        Reply("250 ENHANCEDSTATUSCODES");
      }
      return Step::kContinue;
    }
    case Verb::kMail: {
      if (state_ == State::kConnected) return Reject(RejectReason::kSequence, "503 5.5.1 Error: send HELO/EHLO first");
      if (state_ == State::kMail || state_ == State::kRcpt) {
        return Reject(RejectReason::kSequence, "503 5.5.1 Error: nested MAIL command");
      }
      PathArg p = ParsePathArg(cmd.arg, "FROM", /*allow_null=*/true);
      if (!p.ok) return Reject(RejectReason::kSyntax, p.error);
      std::string body_type;
      for (const auto& [key, value] : p.params) {
        if (!esmtp_) return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + key);
        if (key == "SIZE") {
          uint64_t size = 0;
          auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), size);
          if (ec == std::errc::result_out_of_range)
            size = UINT64_MAX;
          else if (ec != std::errc() || end != value.data() + value.size()) {
            return Reject(RejectReason::kSyntax, "501 5.5.4 Bad SIZE parameter");
          }
          if (size > config_.max_message_size) {
            log::Info("reject: MAIL from " + client_.name + " [" + client_.addr + "]: message size (" +
                      std::to_string(size) + ") exceeds maximum (" + std::to_string(config_.max_message_size) + ")");
            return Reject(RejectReason::kSize, "552 5.3.4 Message size exceeds fixed maximum message size (" +
                                                   std::to_string(config_.max_message_size) + " bytes)");
          }
        } else if (key == "BODY") {
          auto v = ToLower(value);
          if (v != "7bit" && v != "8bitmime") return Reject(RejectReason::kSyntax, "501 5.5.4 Bad BODY parameter");
          body_type = v == "7bit" ? "7BIT" : "8BITMIME";
        } else {
          return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + key);
        }
      }
      ResetTransaction();
      sender_ = p.address;
      body_type_ = body_type;
      qid_ = qids_.Next();
      state_ = State::kMail;
      Reply("250 2.1.0 Ok");
      return Step::kContinue;
    }
    case Verb::kRcpt: {
      if (state_ != State::kMail && state_ != State::kRcpt) {
        return Reject(RejectReason::kSequence, "503 5.5.1 Error: need MAIL command");
      }
      PathArg p = ParsePathArg(cmd.arg, "TO", /*allow_null=*/false);
      if (!p.ok) return Reject(RejectReason::kSyntax, p.error);
      if (!p.params.empty()) return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + p.params[0].first);
      std::string rcpt = p.address;
      if (rcpt.find('@') == std::string::npos) rcpt += "@" + config_.hostname;  // <postmaster>
      if (rcpts_.size() >= config_.max_recipients) {
        log::Mail(qid_, "reject: RCPT <" + rcpt + ">: Too many recipients");
        return Reject(RejectReason::kTooManyRecipients, "452 4.5.3 Error: too many recipients");
      }
      if (!RelayAllowed(rcpt)) {
        log::Mail(qid_,
                  "reject: RCPT from " + client_.name + " [" + client_.addr + "]: <" + rcpt + ">: Relaying denied");
        return Reject(RejectReason::kRelay, "550 5.7.1 <" + rcpt + ">: Relaying denied");
      }
      rcpts_.push_back(std::move(rcpt));
      state_ = State::kRcpt;
      Reply("250 2.1.5 Ok");
      return Step::kContinue;
    }
    case Verb::kData: {
      if (state_ != State::kRcpt) {
        return Reject(RejectReason::kSequence, state_ == State::kMail ? "503 5.5.1 Error: need RCPT command"
                                                                      : "503 5.5.1 Error: need MAIL command");
      }
      if (!cmd.arg.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Syntax: DATA");
      state_ = State::kData;
      data_.clear();
      data_line_start_ = prev_line_crlf_ = true;
      too_big_ = bare_eol_ = false;
      data_bytes_ = 0;
      data_start_us_ = clock_.NowUnixMicros();
      Reply("354 End data with <CR><LF>.<CR><LF>");
      return Step::kContinue;
    }
    case Verb::kRset:
      ResetTransaction();
      Reply("250 2.0.0 Ok");
      return Step::kContinue;
    case Verb::kNoop: Reply("250 2.0.0 Ok"); return Step::kContinue;
    case Verb::kQuit:
      Reply("221 2.0.0 Bye");
      state_ = State::kClosed;
      return Step::kClose;
    case Verb::kVrfy:  // PrivacyOptions=novrfy: never confirm a mailbox
      Reply("252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery");
      return Step::kContinue;
    case Verb::kHelp:
      Reply("214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
      return Step::kContinue;
    case Verb::kExpn:  // PrivacyOptions=noexpn
    case Verb::kStartTls:
    case Verb::kAuth:
    case Verb::kBdat:
    case Verb::kEtrn: return Reject(RejectReason::kUnknownCommand, "502 5.5.1 Error: command not implemented");
    case Verb::kUnknown: break;
  }
  return Reject(RejectReason::kUnknownCommand, "500 5.5.2 Error: command not recognized");
}

Session::Step Session::OnDataLine(std::string_view raw, bool partial) {
  const bool line_start = data_line_start_;
  if (line_start && !partial && prev_line_crlf_ && raw == ".\r\n") return FinishData();
  std::string_view content = raw;
  bool crlf = false;
  if (!partial) {
    if (content.size() >= 2 && content.substr(content.size() - 2) == "\r\n") {
      content.remove_suffix(2);
      crlf = true;
    } else if (!content.empty() && content.back() == '\n') {
      content.remove_suffix(1);
      bare_eol_ = true;  // bare LF: refuse the message (SMTP smuggling)
    }
  }
  if (content.find('\r') != std::string_view::npos) bare_eol_ = true;
  if (line_start && !content.empty() && content.front() == '.') content.remove_prefix(1);  // dot-unstuffing
  data_bytes_ += content.size() + (partial ? 0 : 2);
  if (data_bytes_ > config_.max_message_size) {
    if (!too_big_) {
      too_big_ = true;
      data_.clear();
      data_.shrink_to_fit();
    }
  } else {
    data_.append(content);
    if (!partial) data_.append("\r\n");
  }
  data_line_start_ = !partial;
  if (!partial) prev_line_crlf_ = crlf;
  return Step::kContinue;
}

std::string Session::ReceivedHeader() const {
  std::string h = "Received: from " + helo_ + " (" + client_.name + " [" + client_.addr + "])\r\n\tby " +
                  config_.hostname + " (" + config_.node_name + ") with " + (esmtp_ ? "ESMTP" : "SMTP") + " id " + qid_;
  if (rcpts_.size() == 1) h += "\r\n\tfor <" + rcpts_[0] + ">";
  h += "; " + Rfc5322Date(clock_.NowUnixMicros()) + "\r\n";
  return h;
}

Session::Step Session::FinishData() {
  state_ = State::kRcpt;  // the transaction ends with the reply to DATA
  if (bare_eol_) {
    log::Mail(qid_, "reject: message contains bare CR or LF from " + client_.name + " [" + client_.addr + "]");
    ResetTransaction();
    return Reject(RejectReason::kBareLf, "550 5.6.11 Error: message contains bare <CR> or <LF> characters");
  }
  if (too_big_) {
    log::Mail(qid_, "reject: message size (" + std::to_string(data_bytes_) + ") exceeds maximum (" +
                        std::to_string(config_.max_message_size) + ")");
    ResetTransaction();
    return Reject(RejectReason::kSize,
                  "552 5.3.4 Message is too large; " + std::to_string(config_.max_message_size) + " bytes max");
  }
  HeaderFacts facts = ScanHeaders(data_);
  std::string body = ReceivedHeader();
  std::string msgid = facts.message_id;
  if (!facts.has_message_id) {
    msgid = "<" + qid_ + "@" + config_.hostname + ">";
    body += "Message-ID: " + msgid + "\r\n";
  }
  body.reserve(body.size() + data_.size());
  body += data_;
  data_.clear();

  message_.Clear();
  auto* env = message_.mutable_envelope();
  env->set_qid(qid_);
  env->set_sender(sender_);
  env->set_size(body.size());
  env->set_arrival_unix_us(clock_.NowUnixMicros());
  env->set_precedence_class(facts.precedence_class);
  env->set_client_name(client_.name);
  env->set_client_addr(client_.addr);
  env->set_helo(helo_);
  env->set_body_type(body_type_.empty() ? "7BIT" : body_type_);
  env->set_received_by(config_.node_name);
  env->set_msgid(msgid);
  env->set_mailer_from("esmtp");
  for (const auto& r : rcpts_) message_.add_recipients()->set_address(r);
  accept_log_ = "from=<" + sender_ + ">, size=" + std::to_string(body.size()) +
                ", class=" + std::to_string(facts.precedence_class) + ", nrcpts=" + std::to_string(rcpts_.size()) +
                ", msgid=" + msgid + ", proto=" + (esmtp_ ? "ESMTP" : "SMTP") + ", relay=" + client_.name + " [" +
                client_.addr + "]";
  message_.set_body(std::move(body));
  return Step::kEnqueue;
}

v1::NewMessage Session::TakeMessage() {
  return std::move(message_);
}

Session::Step Session::OnEnqueued(const Status& status) {
  Step step = Step::kContinue;
  // ALREADY_EXISTS: a retried Enqueue whose first attempt committed.
  if (status.ok() || status.code() == Code::kAlreadyExists) {
    log::Mail(qid_, accept_log_);
    Reply("250 2.0.0 Ok: queued as " + qid_);
  } else {
    log::Mail(qid_, "reject: queue unavailable (" + status.ToString() + "), answered 451");
    step = Reject(RejectReason::kQueue, "451 4.3.0 Error: queue unavailable, try again later");
  }
  message_.Clear();
  accept_log_.clear();
  ResetTransaction();
  return step;
}

void Session::OnTimeout() {
  Reply("421 4.4.2 " + config_.hostname + " Error: timeout exceeded");
  state_ = State::kClosed;
}

}  // namespace mx::ingress
