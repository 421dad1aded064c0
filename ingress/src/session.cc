// session.cc — the SMTP server dialogue (RFC 5321, 1870, 1985, 2920, 3207,
// 3461, 3463, 4954, 6152) and the acceptance policy in the order a session
// meets it (DESIGN §6).
#include "session.h"

#include <charconv>

#include "assemble.h"
#include "mx/common/address.h"
#include "mx/common/base64.h"
#include "mx/common/log.h"
#include "mx/common/rfc5322.h"
#include "smtp_command.h"

namespace mx::ingress {
namespace {

// RFC 3461 4: xtext = *( xchar / "+" 2HEXDIG ), xchar = "!".."~" except "+" "=".
bool ValidXtext(std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = s[i];
    if (c == '+') {
      if (i + 2 >= s.size()) return false;
      auto hex = [](char h) { return (h >= '0' && h <= '9') || (h >= 'A' && h <= 'F'); };
      if (!hex(s[i + 1]) || !hex(s[i + 2])) return false;
      i += 2;
    } else if (c < 33 || c > 126 || c == '=') {
      return false;
    }
  }
  return true;
}

std::string XtextEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (c < 33 || c > 126 || c == '+' || c == '=') {
      out += '+';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

Session::Session(std::shared_ptr<const Policy> policy, SessionOptions options, ClientInfo client, const Clock& clock,
                 QidGenerator& qids, SessionObserver* observer)
    : policy_(std::move(policy)),
      cfg_(policy_->settings()),
      options_(std::move(options)),
      client_(std::move(client)),
      clock_(clock),
      qids_(qids),
      observer_(observer) {}

void Session::Start(const Verdict& connect) {
  connect_ = connect;
  qid_ = qids_.Next();  // the session's log id until the first MAIL
  if (connect_.rejected()) {
    log::Mail(qid_, "connect from " + Client() + ": " + connect_.why + ", MAIL will get: " + connect_.reply);
  }
  Reply("220 " + cfg_.hostname + " " + cfg_.greeting);
}

void Session::Reply(std::string_view text) {
  out_.append(text);
  out_.append("\r\n");
}

Session::Step Session::Reject(RejectReason reason, std::string_view reply) {
  Reply(reply);
  // Policy rejections are logged where they are decided, with the rule; protocol
  // errors only at debug level (a client can produce them at line rate).
  if (log::Enabled(log::Level::kDebug)) {
    log::Debug(qid_ + ": " + RejectReasonName(reason) + " from " + Client() + ": " + std::string(reply));
  }
  int code = 0;
  std::from_chars(reply.data(), reply.data() + std::min<size_t>(3, reply.size()), code);
  if (observer_) observer_->OnReject(reason, code);
  if (++errors_ >= cfg_.max_errors) {
    Reply("421 4.7.0 " + cfg_.hostname + " Error: too many errors");
    if (observer_) observer_->OnReject(RejectReason::kErrors, 421);
    log::Mail(qid_, "too many errors after " + std::string(reply.substr(0, 40)) + " from " + Client());
    state_ = State::kClosed;
    return Step::kClose;
  }
  return Step::kContinue;
}

void Session::ResetTransaction() {
  sender_.clear();
  body_type_.clear();
  ret_.clear();
  envid_.clear();
  discard_ = false;
  discard_why_.clear();
  rcpts_.clear();
  rcpt_commands_ = 0;
  data_.clear();
  data_.shrink_to_fit();
  too_big_ = bare_eol_ = false;
  data_bytes_ = 0;
  if (state_ != State::kConnected && state_ != State::kClosed) state_ = State::kGreeted;
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
    if (state_ == State::kAuth) {
      state_ = State::kGreeted;
      auth_step_ = AuthStep::kNone;
    }
    return Reject(RejectReason::kLineLength, "500 5.5.2 Error: line too long");
  }
  while (!raw.empty() && (raw.back() == '\n' || raw.back() == '\r')) raw.remove_suffix(1);
  if (state_ == State::kAuth) return OnAuthLine(raw);
  return OnCommandLine(raw);
}

// NOOP, RSET, VRFY, EXPN, HELP and ETRN beyond the limit count as errors
// (Postfix smtpd_junk_command_limit), so a client cannot idle forever on them.
Session::Step Session::Junk() {
  if (++junk_ <= options_.max_junk_commands) return Step::kContinue;
  if (++errors_ >= cfg_.max_errors) {
    Reply("421 4.7.0 " + cfg_.hostname + " Error: too many errors");
    if (observer_) observer_->OnReject(RejectReason::kErrors, 421);
    log::Mail(qid_, "too many junk commands from " + Client());
    state_ = State::kClosed;
    return Step::kClose;
  }
  return Step::kContinue;
}

Session::Step Session::OnCommandLine(std::string_view line) {
  Command cmd = ParseCommand(line);
  if (observer_) observer_->OnCommand(cmd.verb == Verb::kUnknown ? "unknown" : cmd.verb_text);
  auto reply_junk = [&](std::string_view reply) {
    Reply(reply);
    return Junk();
  };
  switch (cmd.verb) {
    case Verb::kEhlo: return OnEhlo(true, cmd.arg);
    case Verb::kHelo: return OnEhlo(false, cmd.arg);
    case Verb::kMail: return OnMail(cmd.arg);
    case Verb::kRcpt: return OnRcpt(cmd.arg);
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
      Reply("354 End data with <CR><LF>.<CR><LF>");
      return Step::kContinue;
    }
    case Verb::kRset: ResetTransaction(); return reply_junk("250 2.0.0 Ok");
    case Verb::kNoop: return reply_junk("250 2.0.0 Ok");
    case Verb::kQuit:
      Reply("221 2.0.0 Bye");
      state_ = State::kClosed;
      return Step::kClose;
    case Verb::kVrfy: return OnVrfy(cmd.arg, false);
    case Verb::kExpn: return OnVrfy(cmd.arg, true);
    case Verb::kHelp: {
      std::string list = "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP ETRN";
      if (options_.tls_available && !tls_) list += " STARTTLS";
      if (AuthOffered()) list += " AUTH";
      return reply_junk(list);
    }
    case Verb::kStartTls: {
      if (!options_.tls_available)
        return Reject(RejectReason::kUnknownCommand, "502 5.5.1 Error: command not implemented");
      if (tls_) return Reject(RejectReason::kSequence, "503 5.5.1 Error: TLS already active");
      if (!cmd.arg.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Syntax: STARTTLS");
      if (state_ == State::kMail || state_ == State::kRcpt) {
        return Reject(RejectReason::kSequence, "503 5.5.1 Error: MAIL transaction in progress");
      }
      Reply("220 2.0.0 Ready to start TLS");
      return Step::kStartTls;
    }
    case Verb::kAuth: return OnAuth(cmd.arg);
    case Verb::kEtrn: return OnEtrn(cmd.arg);
    case Verb::kBdat: return Reject(RejectReason::kUnknownCommand, "502 5.5.1 Error: command not implemented");
    case Verb::kUnknown: break;
  }
  return Reject(RejectReason::kUnknownCommand, "500 5.5.2 Error: command not recognized");
}

Session::Step Session::OnEhlo(bool esmtp, const std::string& arg) {
  if (arg.empty()) {
    return Reject(RejectReason::kSyntax, esmtp ? "501 5.5.4 Syntax: EHLO hostname" : "501 5.5.4 Syntax: HELO hostname");
  }
  state_ = State::kGreeted;
  ResetTransaction();
  helo_ = arg;
  esmtp_ = esmtp;
  if (!esmtp_) {
    Reply("250 " + cfg_.hostname);
    return Step::kContinue;
  }
  Reply("250-" + cfg_.hostname);
  Reply("250-PIPELINING");
  Reply("250-SIZE " + std::to_string(cfg_.max_message_size));
  if (!policy_->novrfy()) Reply("250-VRFY");
  Reply("250-ETRN");
  if (options_.tls_available && !tls_) Reply("250-STARTTLS");
  if (AuthOffered() && auth_id_.empty()) Reply("250-AUTH PLAIN LOGIN");
  Reply("250-ENHANCEDSTATUSCODES");
  Reply("250-8BITMIME");
  Reply("250 DSN");
  return Step::kContinue;
}

Session::Step Session::OnMail(const std::string& arg) {
  if (state_ == State::kConnected) return Reject(RejectReason::kSequence, "503 5.5.1 Error: send HELO/EHLO first");
  if (state_ == State::kMail || state_ == State::kRcpt) {
    return Reject(RejectReason::kSequence, "503 5.5.1 Error: nested MAIL command");
  }
  if (options_.draining && options_.draining->load(std::memory_order_relaxed)) {
    // Between transactions: nothing of the client's is lost by ending here.
    Reply("421 4.3.2 " + cfg_.hostname + " Service not available, node draining; try another");
    if (observer_) observer_->OnReject(RejectReason::kDrain, 421);
    log::Info("session from " + Client() + " ended at MAIL: draining");
    state_ = State::kClosed;
    return Step::kClose;
  }
  PathArg p = ParsePathArg(arg, "FROM", /*allow_null=*/true);
  if (!p.ok) return Reject(RejectReason::kSyntax, p.error);
  std::string body_type, ret, envid;
  bool seen_size = false, seen_auth = false;
  for (const auto& [key, value] : p.params) {
    if (!esmtp_) return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + key);
    if (key == "SIZE") {
      if (seen_size) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate SIZE parameter");
      seen_size = true;
      uint64_t size = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), size);
      if (ec == std::errc::result_out_of_range) {
        size = UINT64_MAX;
      } else if (ec != std::errc() || end != value.data() + value.size()) {
        return Reject(RejectReason::kSyntax, "501 5.5.4 Bad SIZE parameter");
      }
      if (size > cfg_.max_message_size) {
        log::Mail(qid_, "reject: MAIL from " + Client() + ": message size (" + std::to_string(size) +
                            ") exceeds maximum (" + std::to_string(cfg_.max_message_size) + ")");
        return Reject(RejectReason::kSize, "552 5.3.4 Message size exceeds fixed maximum message size (" +
                                               std::to_string(cfg_.max_message_size) + " bytes)");
      }
    } else if (key == "BODY") {
      if (!body_type.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate BODY parameter");
      auto v = ToLower(value);
      if (v != "7bit" && v != "8bitmime") return Reject(RejectReason::kSyntax, "501 5.5.4 Bad BODY parameter");
      body_type = v == "7bit" ? "7BIT" : "8BITMIME";
    } else if (key == "RET") {  // RFC 3461 4.3
      if (!ret.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate RET parameter");
      ret = Upper(value);
      if (ret != "FULL" && ret != "HDRS") return Reject(RejectReason::kSyntax, "501 5.5.4 Bad RET parameter");
    } else if (key == "ENVID") {  // RFC 3461 4.4
      if (!envid.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate ENVID parameter");
      if (value.empty() || value.size() > 100 || !ValidXtext(value)) {
        return Reject(RejectReason::kSyntax, "501 5.5.4 Bad ENVID parameter");
      }
      envid = value;
    } else if (key == "AUTH") {  // RFC 4954 5: accepted, not trusted
      if (seen_auth) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate AUTH parameter");
      seen_auth = true;
      if (value.empty() || !ValidXtext(value)) return Reject(RejectReason::kSyntax, "501 5.5.4 Bad AUTH parameter");
    } else {
      return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + key);
    }
  }
  // Connect-stage verdicts are answered here, with their own text.
  if (connect_.rejected()) {
    log::Mail(qid_, "reject: MAIL from " + Client() + ": " + connect_.reply + " (" + connect_.why + ")");
    return Reject(connect_.reason, connect_.reply);
  }
  if (options_.storage_low) {
    log::Mail(qid_, "reject: MAIL from " + Client() + ": queue storage low");
    return Reject(RejectReason::kStorage, "452 4.3.1 Insufficient system storage");
  }
  Verdict from = connect_.kind == Verdict::Kind::kOk ? Verdict{} : policy_->CheckSender(p.address);
  if (from.rejected()) {
    log::Mail(qid_, "reject: MAIL from " + Client() + ": <" + p.address + ">: " + from.reply + " (" + from.why + ")");
    return Reject(RejectReason::kAccess, from.reply);
  }
  ResetTransaction();
  if (mail_seen_) qid_ = qids_.Next();  // the first transaction keeps the session's id
  mail_seen_ = true;
  sender_ = p.address;
  body_type_ = body_type;
  ret_ = ret;
  envid_ = envid;
  if (connect_.kind == Verdict::Kind::kDiscard || from.kind == Verdict::Kind::kDiscard) {
    discard_ = true;
    discard_why_ = connect_.kind == Verdict::Kind::kDiscard ? connect_.why : from.why;
  }
  state_ = State::kMail;
  Reply("250 2.1.0 Ok");
  return Step::kContinue;
}

Session::Step Session::OnRcpt(const std::string& arg) {
  if (state_ != State::kMail && state_ != State::kRcpt) {
    return Reject(RejectReason::kSequence, "503 5.5.1 Error: need MAIL command");
  }
  PathArg p = ParsePathArg(arg, "TO", /*allow_null=*/false);
  if (!p.ok) return Reject(RejectReason::kSyntax, p.error);
  Rcpt r;
  bool seen_notify = false;
  for (const auto& [key, value] : p.params) {
    if (!esmtp_) return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + key);
    if (key == "NOTIFY") {  // RFC 3461 4.1
      if (seen_notify) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate NOTIFY parameter");
      seen_notify = true;
      std::string_view v = value;
      uint32_t bits = 0;
      while (true) {
        auto comma = v.find(',');
        std::string item = Upper(v.substr(0, comma));
        if (item == "NEVER")
          bits |= v1::NOTIFY_NEVER;
        else if (item == "SUCCESS")
          bits |= v1::NOTIFY_SUCCESS;
        else if (item == "FAILURE")
          bits |= v1::NOTIFY_FAILURE;
        else if (item == "DELAY")
          bits |= v1::NOTIFY_DELAY;
        else
          return Reject(RejectReason::kSyntax, "501 5.5.4 Bad NOTIFY parameter");
        if (comma == std::string_view::npos) break;
        v = v.substr(comma + 1);
      }
      if ((bits & v1::NOTIFY_NEVER) && bits != v1::NOTIFY_NEVER) {
        return Reject(RejectReason::kSyntax, "501 5.5.4 Bad NOTIFY parameter: NEVER stands alone");
      }
      r.notify = bits;
    } else if (key == "ORCPT") {  // RFC 3461 4.2: addr-type ";" xtext
      if (!r.orcpt.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Duplicate ORCPT parameter");
      auto semi = value.find(';');
      if (semi == std::string::npos || semi == 0 || semi + 1 >= value.size() || value.size() > 500 ||
          !ValidXtext(std::string_view(value).substr(semi + 1))) {
        return Reject(RejectReason::kSyntax, "501 5.5.4 Bad ORCPT parameter");
      }
      for (char c : value.substr(0, semi)) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') {
          return Reject(RejectReason::kSyntax, "501 5.5.4 Bad ORCPT parameter");
        }
      }
      r.orcpt = value;
    } else {
      return Reject(RejectReason::kSyntax, "555 5.5.4 Unsupported option: " + key);
    }
  }
  std::string rcpt = p.address;
  if (rcpt.find('@') == std::string::npos) rcpt += "@" + cfg_.hostname;  // <postmaster>
  if (rcpt_commands_ >= cfg_.max_recipients_per_message) {
    log::Mail(qid_, "reject: RCPT from " + Client() + ": <" + rcpt + ">: Too many recipients");
    return Reject(RejectReason::kTooManyRecipients, "452 4.5.3 Error: too many recipients");
  }
  RecipientVerdict v = policy_->CheckRecipient(rcpt, Trusted());
  if (v.rejected()) {
    log::Mail(qid_, "reject: RCPT from " + Client() + ": " + v.reply + "; from=<" + sender_ + "> to=<" + rcpt + "> (" +
                        v.why + ")");
    return Reject(v.reason, v.reply);
  }
  // The cluster's suppression list: an address that hard-bounced before.
  if (options_.suppressions && options_.suppressions->Contains(rcpt)) {
    const std::string reply =
        "550 5.1.1 <" + rcpt + ">: Recipient address rejected: on the suppression list (it bounced)";
    log::Mail(qid_, "reject: RCPT from " + Client() + ": " + reply + "; from=<" + sender_ + "> to=<" + rcpt +
                        "> (suppressed)");
    return Reject(RejectReason::kSuppressed, reply);
  }
  if (v.kind == Verdict::Kind::kDiscard && !discard_) {
    discard_ = true;
    discard_why_ = v.why;
  }
  ++rcpt_commands_;
  const bool rewritten = v.addresses.size() != 1 || v.addresses[0] != rcpt;
  if (rewritten)
    log::Mail(qid_, "<" + rcpt + "> rewritten to " + std::to_string(v.addresses.size()) + " (" + v.why + ")");
  for (auto& a : v.addresses) {
    Rcpt out = r;
    out.address = std::move(a);
    if (out.orcpt.empty() && rewritten) out.orcpt = "rfc822;" + XtextEncode(rcpt);
    bool dup = false;
    for (const auto& existing : rcpts_) dup = dup || existing.address == out.address;
    if (!dup) rcpts_.push_back(std::move(out));
  }
  state_ = State::kRcpt;
  Reply("250 2.1.5 Ok");
  return Step::kContinue;
}

Session::Step Session::OnVrfy(const std::string& arg, bool expn) {
  if ((expn && policy_->noexpn()) || (!expn && policy_->novrfy())) {
    if (observer_) observer_->OnReject(RejectReason::kPrivacy, expn ? 502 : 252);
    Reply(expn ? "502 5.7.0 EXPN not permitted" : "252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery");
    return Junk();
  }
  if (arg.empty())
    return Reject(RejectReason::kSyntax, expn ? "501 5.5.4 Syntax: EXPN name" : "501 5.5.4 Syntax: VRFY address");
  std::string a = arg;
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  if (a.find('@') == std::string::npos) a += "@" + cfg_.hostname;
  // Only local users are answered; others could be probed through us.
  if (!policy_->IsLocalDomain(DomainOf(a))) {
    Reply("252 2.5.2 Cannot VRFY user; try RCPT to attempt delivery");
    return Junk();
  }
  RecipientVerdict v = policy_->CheckRecipient(a, false);
  if (v.rejected()) {
    Reply(v.reply);
    return Junk();
  }
  if (!expn) {
    Reply("250 2.1.5 <" + a + ">");
  } else {
    for (size_t i = 0; i < v.addresses.size(); ++i) {
      Reply(std::string(i + 1 < v.addresses.size() ? "250-" : "250 ") + "2.1.5 <" + v.addresses[i] + ">");
    }
  }
  return Junk();
}

// RFC 4954.
Session::Step Session::OnAuth(const std::string& arg) {
  if (!options_.auth_available)
    return Reject(RejectReason::kUnknownCommand, "502 5.5.1 Error: command not implemented");
  if (!AuthOffered()) {
    return Reject(RejectReason::kAuth, "538 5.7.11 Encryption required for requested authentication mechanism");
  }
  if (!esmtp_) return Reject(RejectReason::kSequence, "503 5.5.1 Error: send EHLO first");
  if (!auth_id_.empty()) return Reject(RejectReason::kSequence, "503 5.5.1 Error: already authenticated");
  if (state_ == State::kMail || state_ == State::kRcpt) {
    return Reject(RejectReason::kSequence, "503 5.5.1 Error: MAIL transaction in progress");
  }
  auto sp = arg.find(' ');
  std::string mech = Upper(arg.substr(0, sp));
  std::string initial = sp == std::string::npos ? std::string() : std::string(Trim(arg.substr(sp + 1)));
  if (mech.empty()) return Reject(RejectReason::kSyntax, "501 5.5.4 Syntax: AUTH mechanism");
  if (mech != "PLAIN" && mech != "LOGIN") {
    return Reject(RejectReason::kAuth, "504 5.5.4 Unrecognized authentication type");
  }
  auth_mech_ = mech;
  auth_user_.clear();
  auth_password_.clear();
  state_ = State::kAuth;
  if (mech == "PLAIN") {
    auth_step_ = AuthStep::kPlain;
    if (initial.empty()) {
      Reply("334 ");
      return Step::kContinue;
    }
  } else {
    auth_step_ = AuthStep::kLoginUser;
    if (initial.empty()) {
      Reply("334 " + Base64Encode("Username:"));
      return Step::kContinue;
    }
  }
  return OnAuthLine(initial);
}

Session::Step Session::OnAuthLine(std::string_view line) {
  if (line == "*") {
    state_ = State::kGreeted;
    auth_step_ = AuthStep::kNone;
    return Reject(RejectReason::kAuth, "501 5.0.0 Authentication cancelled");
  }
  std::optional<std::string> decoded = line == "=" ? std::optional<std::string>("") : Base64Decode(Trim(line));
  if (!decoded) {
    state_ = State::kGreeted;
    auth_step_ = AuthStep::kNone;
    return Reject(RejectReason::kAuth, "501 5.5.2 Cannot decode response");
  }
  return AuthDecoded(*decoded);
}

Session::Step Session::AuthDecoded(std::string_view decoded) {
  switch (auth_step_) {
    case AuthStep::kPlain: {
      // authzid NUL authcid NUL passwd; an authzid other than authcid is refused.
      auto n1 = decoded.find('\0');
      auto n2 = n1 == std::string_view::npos ? n1 : decoded.find('\0', n1 + 1);
      state_ = State::kGreeted;
      auth_step_ = AuthStep::kNone;
      if (n2 == std::string_view::npos) return Reject(RejectReason::kAuth, "501 5.5.2 Cannot decode response");
      std::string_view authzid = decoded.substr(0, n1), authcid = decoded.substr(n1 + 1, n2 - n1 - 1);
      if (!authzid.empty() && authzid != authcid) {
        if (observer_) observer_->OnAuth(false);
        log::Mail(qid_, "AUTH PLAIN from " + Client() + ": authorization identity differs; refused");
        return Reject(RejectReason::kAuth, "535 5.7.8 Authentication credentials invalid");
      }
      auth_user_ = std::string(authcid);
      auth_password_ = std::string(decoded.substr(n2 + 1));
      return Step::kAuthenticate;
    }
    case AuthStep::kLoginUser:
      auth_user_ = std::string(decoded);
      auth_step_ = AuthStep::kLoginPassword;
      Reply("334 " + Base64Encode("Password:"));
      return Step::kContinue;
    case AuthStep::kLoginPassword:
      auth_password_ = std::string(decoded);
      state_ = State::kGreeted;
      auth_step_ = AuthStep::kNone;
      return Step::kAuthenticate;
    case AuthStep::kNone: break;
  }
  state_ = State::kGreeted;
  return Reject(RejectReason::kSequence, "503 5.5.1 Error: no authentication in progress");
}

Session::Step Session::OnAuthResult(bool ok) {
  if (observer_) observer_->OnAuth(ok);
  std::string user = std::move(auth_user_);
  auth_user_.clear();
  auth_password_.assign(auth_password_.size(), '\0');
  auth_password_.clear();
  if (ok) {
    auth_id_ = user;
    log::Mail(qid_, "AUTH " + auth_mech_ + " from " + Client() + ": authenticated as " + user);
    Reply("235 2.7.0 Authentication successful");
    return Step::kContinue;
  }
  log::Mail(qid_,
            "AUTH " + auth_mech_ + " from " + Client() + ": authentication failed for '" + user.substr(0, 64) + "'");
  return Reject(RejectReason::kAuth, "535 5.7.8 Authentication credentials invalid");
}

Session::Step Session::OnAuthThrottled(bool by_address) {
  std::string user = std::move(auth_user_);
  auth_user_.clear();
  auth_password_.assign(auth_password_.size(), '\0');
  auth_password_.clear();
  if (by_address) {
    log::Mail(qid_, "AUTH " + auth_mech_ + " from " + Client() + ": refused, too many failed authentications from " +
                        client_.addr);
    Reply("421 4.7.0 " + cfg_.hostname + " Error: too many failed authentications from " + client_.addr);
    if (observer_) observer_->OnReject(RejectReason::kAuthRate, 421);
    state_ = State::kClosed;
    return Step::kClose;
  }
  log::Mail(qid_, "AUTH " + auth_mech_ + " from " + Client() + ": refused, too many failed authentications for '" +
                      user.substr(0, 64) + "'");
  return Reject(RejectReason::kAuthRate,
                "454 4.7.0 Temporary authentication failure: too many failed attempts, try again later");
}

// RFC 1985: a queue run for a domain we are a backup MX for.
Session::Step Session::OnEtrn(const std::string& arg) {
  if (state_ == State::kConnected) return Reject(RejectReason::kSequence, "503 5.5.1 Error: send HELO/EHLO first");
  if (state_ == State::kMail || state_ == State::kRcpt) {
    return Reject(RejectReason::kSequence, "503 5.5.1 Error: MAIL transaction in progress");
  }
  std::string d = ToLower(Trim(arg));
  if (!d.empty() && (d.front() == '@' || d.front() == '#')) d.erase(0, 1);  // "@domain": subdomains too
  if (d.empty() || d.find_first_of(" \t<>@") != std::string::npos) {
    return Reject(RejectReason::kSyntax, "501 5.5.4 Syntax: ETRN domain");
  }
  if (Step s = Junk(); s == Step::kClose) return s;
  if (!policy_->IsRelayDomain(d)) {
    log::Mail(qid_, "reject: ETRN " + d + " from " + Client() + ": not a relay domain");
    return Reject(RejectReason::kEtrn, "459 4.7.1 <" + d + ">: Node not allowed: not a relay domain");
  }
  etrn_domain_ = d;
  return Step::kEtrn;
}

Session::Step Session::OnEtrnResult(const Result<uint64_t>& started) {
  if (!started.ok()) {
    log::Mail(qid_, "ETRN " + etrn_domain_ + " from " + Client() + ": " + started.status().ToString());
    return Reject(RejectReason::kQueue, "458 4.3.0 Unable to queue messages for node <" + etrn_domain_ + ">");
  }
  log::Mail(qid_, "ETRN " + etrn_domain_ + " from " + Client() + ": " + std::to_string(*started) + " recipients");
  Reply(*started == 0 ? "251 2.0.0 No messages waiting for node <" + etrn_domain_ + ">"
                      : "250 2.0.0 Queuing for node <" + etrn_domain_ + "> started");
  return Step::kContinue;
}

void Session::OnTlsStarted() {
  // RFC 3207 4.2: forget everything learned before TLS.
  tls_ = true;
  state_ = State::kConnected;
  esmtp_ = false;
  helo_.clear();
  ResetTransaction();
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
  if (data_bytes_ > cfg_.max_message_size) {
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
  std::string with = esmtp_ ? "ESMTP" : "SMTP";
  if (tls_ && esmtp_) with = "ESMTPS";
  if (!auth_id_.empty() && esmtp_) with += "A";  // RFC 3848
  std::string h = "Received: from " + helo_ + " (" + Client() + ")\r\n\tby " + cfg_.hostname + " (" +
                  options_.node_name + ") with " + with + " id " + qid_;
  if (rcpts_.size() == 1) h += "\r\n\tfor <" + rcpts_[0].address + ">";
  h += "; " + Rfc5322Date(clock_.NowUnixMicros()) + "\r\n";
  return h;
}

Session::Step Session::FinishData() {
  state_ = State::kRcpt;  // the transaction ends with the reply to DATA
  if (bare_eol_) {
    log::Mail(qid_, "reject: message contains bare CR or LF from " + Client());
    ResetTransaction();
    return Reject(RejectReason::kBareLf, "550 5.6.11 Error: message contains bare <CR> or <LF> characters");
  }
  if (too_big_) {
    log::Mail(qid_, "reject: message size (" + std::to_string(data_bytes_) + ") exceeds maximum (" +
                        std::to_string(cfg_.max_message_size) + ")");
    ResetTransaction();
    return Reject(RejectReason::kSize,
                  "552 5.3.4 Message is too large; " + std::to_string(cfg_.max_message_size) + " bytes max");
  }
  if (Verdict h = policy_->CheckHeaders(data_); h.rejected()) {
    log::Mail(qid_, "reject: header from " + Client() + ": " + h.reply + "; from=<" + sender_ + "> (" + h.why + ")");
    ResetTransaction();
    return Reject(h.reason, h.reply);
  }
  if (discard_) {
    log::Mail(qid_, "discarded: from=<" + sender_ + ">, nrcpts=" + std::to_string(rcpts_.size()) +
                        ", relay=" + Client() + " (" + discard_why_ + ")");
    if (observer_) observer_->OnDiscard();
    Reply("250 2.0.0 Ok: queued as " + qid_);
    ResetTransaction();
    return Step::kDiscard;
  }
  auto assembled = AssembleMessage(*policy_, data_, ReceivedHeader(), qid_, cfg_.hostname, Trusted(),
                                   clock_.NowUnixMicros(), observer_);
  data_.clear();
  if (!assembled.ok()) {
    log::Error(qid_ + ": DKIM signing failed: " + assembled.status().message());
    ResetTransaction();
    return Reject(RejectReason::kDkim, "451 4.7.5 Error: DKIM signing failed, try again later");
  }
  const HeaderFacts& facts = assembled->facts;
  const std::string msgid = assembled->msgid;
  std::string body = std::move(assembled->body);

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
  env->set_auth_id(auth_id_);
  env->set_ret(ret_);
  env->set_envid(envid_);
  env->set_body_type(body_type_.empty() ? "7BIT" : body_type_);
  env->set_received_by(options_.node_name);
  env->set_msgid(msgid);
  env->set_mailer_from("esmtp");
  env->set_queue_only(options_.queue_only);
  for (const auto& r : rcpts_) {
    auto* rr = message_.add_recipients();
    rr->set_address(r.address);
    rr->set_orcpt(r.orcpt);
    rr->set_notify(r.notify);
  }
  accept_log_ = "from=<" + sender_ + ">, size=" + std::to_string(body.size()) +
                ", class=" + std::to_string(facts.precedence_class) + ", nrcpts=" + std::to_string(rcpts_.size()) +
                ", msgid=" + msgid + ", proto=" + (esmtp_ ? "ESMTP" : "SMTP") + ", relay=" + Client();
  if (!auth_id_.empty()) accept_log_ += ", auth=" + auth_id_;
  accept_log_ += assembled->dkim_log;
  if (options_.queue_only) accept_log_ += ", queue-only (load)";
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
  } else if (status.code() == Code::kResourceExhausted) {
    log::Mail(qid_, "reject: queue storage low (" + status.ToString() + "), answered 452");
    step = Reject(RejectReason::kStorage, "452 4.3.1 Insufficient system storage");
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
  Reply("421 4.4.2 " + cfg_.hostname + " Error: timeout exceeded");
  state_ = State::kClosed;
}

}  // namespace mx::ingress
