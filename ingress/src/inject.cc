// inject.cc — the Inject gRPC service: tokens, templates, policy, enqueue.
#include "inject.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <future>
#include <set>
#include <sstream>

#include "assemble.h"
#include "mx/common/address.h"
#include "mx/common/base64.h"
#include "mx/common/log.h"
#include "mx/common/rfc5322.h"
#include "mx/v1/inject.grpc.pb.h"
#include "probe.h"

namespace mx::ingress {
namespace {

constexpr size_t kMaxTemplateRecipients = 10000;
constexpr size_t kMaxLine = 998;

bool Ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// LF or CRLF line ends to CRLF; a bare CR is refused (SMTP smuggling).
Result<std::string> Crlf(std::string_view text, const std::string& field) {
  std::string out;
  out.reserve(text.size() + text.size() / 40);
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\r') {
      if (i + 1 >= text.size() || text[i + 1] != '\n') {
        return Status(Code::kInvalidArgument, field + ": a bare CR is not allowed");
      }
      continue;  // the LF that follows writes the CRLF
    }
    if (c == '\n') {
      out += "\r\n";
    } else if (c == '\0') {
      return Status(Code::kInvalidArgument, field + ": NUL is not allowed");
    } else {
      out += c;
    }
  }
  if (!out.empty() && !out.ends_with("\r\n")) out += "\r\n";
  size_t start = 0;
  for (size_t eol; (eol = out.find("\r\n", start)) != std::string::npos; start = eol + 2) {
    if (eol - start > kMaxLine) {
      return Status(Code::kInvalidArgument, field + ": a line is longer than 998 octets (RFC 5322 2.1.1)");
    }
  }
  return out;
}

// A header value from a variable must stay one line.
Status OneLine(std::string_view value, const std::string& field) {
  if (value.find_first_of("\r\n") != std::string_view::npos) {
    return Status(Code::kInvalidArgument, field + ": a header value may not contain line breaks");
  }
  return Status::Ok();
}

// RFC 2047 encoded-words for a non-ASCII header value (base64, UTF-8).
std::string EncodedWords(std::string_view value) {
  if (Ascii(value)) return std::string(value);
  std::string out;
  size_t i = 0;
  while (i < value.size()) {
    size_t n = std::min<size_t>(45, value.size() - i);  // at most 60 base64 octets a word
    while (i + n < value.size() && n > 0 && (static_cast<unsigned char>(value[i + n]) & 0xC0) == 0x80) --n;
    if (n == 0) n = std::min<size_t>(45, value.size() - i);
    if (!out.empty()) out += "\r\n ";
    out += "=?UTF-8?B?" + Base64Encode(value.substr(i, n)) + "?=";
    i += n;
  }
  return out;
}

grpc::Status Invalid(const std::string& why) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, why);
}

}  // namespace

Result<std::map<std::string, std::string>> ParseInjectTokens(std::string_view text, const std::string& origin) {
  std::map<std::string, std::string> tokens;
  std::set<std::string> names;
  std::istringstream in{std::string(text)};
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string name, token, extra;
    if (!(words >> name)) continue;
    const std::string where = origin + ":" + std::to_string(n);
    if (!(words >> token) || (words >> extra))
      return Status(Code::kInvalidArgument, where + ": expected '<name> <token>'");
    if (token.size() < 20) return Status(Code::kInvalidArgument, where + ": a token needs at least 20 characters");
    if (tokens.count(token) || !names.insert(name).second) {
      return Status(Code::kInvalidArgument, where + ": names and tokens must be unique");
    }
    tokens[token] = name;
  }
  if (tokens.empty()) return Status(Code::kInvalidArgument, origin + ": no tokens");
  return tokens;
}

Result<std::string> RenderTemplate(std::string_view text, const std::map<std::string, std::string>& vars) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t open = text.find("{{", pos);
    if (open == std::string_view::npos) {
      out.append(text.substr(pos));
      break;
    }
    size_t close = text.find("}}", open + 2);
    if (close == std::string_view::npos) return Status(Code::kInvalidArgument, "an unclosed {{");
    out.append(text.substr(pos, open - pos));
    std::string name(Trim(text.substr(open + 2, close - open - 2)));
    auto it = vars.find(name);
    if (it == vars.end()) return Status(Code::kInvalidArgument, "the variable '" + name + "' has no value");
    out += it->second;
    pos = close + 2;
  }
  return out;
}

Result<std::string> BuildTemplateMessage(const v1::InjectTemplate& t, const std::map<std::string, std::string>& vars,
                                         const std::string& boundary, int64_t now_unix_us) {
  auto field = [&](const std::string& name, const std::string& text) -> Result<std::string> {
    auto r = RenderTemplate(text, vars);
    if (!r.ok()) return Status(Code::kInvalidArgument, "template." + name + ": " + r.status().message());
    return r;
  };
  if (t.from().empty()) return Status(Code::kInvalidArgument, "template.from: required");
  if (t.text().empty()) return Status(Code::kInvalidArgument, "template.text: required");
  auto from = field("from", t.from());
  if (!from.ok()) return from.status();
  if (auto st = OneLine(*from, "template.from"); !st.ok()) return st;
  auto subject = field("subject", t.subject());
  if (!subject.ok()) return subject.status();
  if (auto st = OneLine(*subject, "template.subject"); !st.ok()) return st;
  auto to = vars.find("to");
  std::string msg = "From: " + *from + "\r\nTo: " + (to == vars.end() ? std::string() : to->second) +
                    "\r\nSubject: " + EncodedWords(*subject) + "\r\nDate: " + Rfc5322Date(now_unix_us) +
                    "\r\nMIME-Version: 1.0\r\n";
  for (const auto& [name, value] : std::map<std::string, std::string>(t.headers().begin(), t.headers().end())) {
    const std::string key = "template.headers[" + name + "]";
    if (name.empty() || name.find_first_of(": \t\r\n") != std::string::npos) {
      return Status(Code::kInvalidArgument, key + ": not a header name");
    }
    const std::string lower = ToLower(name);
    for (const char* own :
         {"from", "to", "subject", "date", "mime-version", "content-type", "content-transfer-encoding"}) {
      if (lower == own) return Status(Code::kInvalidArgument, key + ": set by the template itself");
    }
    auto v = field("headers[" + name + "]", value);
    if (!v.ok()) return v.status();
    if (auto st = OneLine(*v, key); !st.ok()) return st;
    msg += name + ": " + EncodedWords(*v) + "\r\n";
  }
  auto text = field("text", t.text());
  if (!text.ok()) return text.status();
  auto text_crlf = Crlf(*text, "template.text");
  if (!text_crlf.ok()) return text_crlf.status();
  const char* text_cte = Ascii(*text_crlf) ? "7bit" : "8bit";
  if (t.html().empty()) {
    msg += std::string("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: ") + text_cte +
           "\r\n\r\n" + *text_crlf;
    return msg;
  }
  auto html = field("html", t.html());
  if (!html.ok()) return html.status();
  auto html_crlf = Crlf(*html, "template.html");
  if (!html_crlf.ok()) return html_crlf.status();
  const char* html_cte = Ascii(*html_crlf) ? "7bit" : "8bit";
  msg += "Content-Type: multipart/alternative; boundary=\"" + boundary + "\"\r\n\r\n";
  msg += "--" + boundary + "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: " + text_cte +
         "\r\n\r\n" + *text_crlf;
  msg += "--" + boundary + "\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: " + html_cte +
         "\r\n\r\n" + *html_crlf;
  msg += "--" + boundary + "--\r\n";
  return msg;
}

namespace {

class InjectService final : public v1::Inject::Service {
 public:
  explicit InjectService(InjectContext c) : c_(std::move(c)) {}

  grpc::Status Inject(grpc::ServerContext* ctx, const v1::InjectRequest* req, v1::InjectResponse* resp) override {
    std::string who;
    if (auto st = Authenticate(*ctx, &who); !st.ok()) {
      Probe::Get().InjectRequest("unauthenticated");
      return st;
    }
    auto st = Handle(*ctx, who, *req, resp);
    Probe::Get().InjectRequest(st.ok()                                                  ? "ok"
                               : st.error_code() == grpc::StatusCode::INVALID_ARGUMENT  ? "invalid"
                               : st.error_code() == grpc::StatusCode::PERMISSION_DENIED ? "rejected"
                                                                                        : "unavailable");
    return st;
  }

 private:
  grpc::Status Authenticate(const grpc::ServerContext& ctx, std::string* who) const {
    auto md = ctx.client_metadata().find("authorization");
    if (md != ctx.client_metadata().end()) {
      std::string_view v(md->second.data(), md->second.size());
      if (v.starts_with("Bearer ")) {
        v.remove_prefix(7);
        // Every token compared in full, so timing says nothing about which is near.
        bool found = false;
        for (const auto& [token, name] : c_.tokens) {
          unsigned diff = token.size() != v.size();
          for (size_t i = 0; i < token.size(); ++i) diff |= token[i] ^ (i < v.size() ? v[i] : 0);
          if (diff == 0) {
            *who = name;
            found = true;
          }
        }
        if (found) return grpc::Status::OK;
      }
    }
    log::Warn("inject: refused a call from " + ctx.peer() + ": no valid token");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "a valid inject token is required (authorization: Bearer)");
  }

  // One message to enqueue and the recipients it carries.
  struct Pending {
    v1::NewMessage message;
    std::string qid;
    size_t size = 0;
    std::vector<std::string> rcpts;  // as requested (for rejections when the enqueue fails)
    std::string log_line;
    std::future<Status> done;
  };

  grpc::Status Handle(const grpc::ServerContext& ctx, const std::string& who, const v1::InjectRequest& req,
                      v1::InjectResponse* resp) {
    auto policy = c_.policy();
    if (!policy) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no policy loaded");
    const IngressConfig& cfg = policy->settings();
    const bool templated = req.has_template_();
    if (templated == !req.message().empty()) return Invalid("give either message or template");
    if (req.recipients().empty()) return Invalid("recipients: at least one");
    const size_t max_rcpts = templated ? kMaxTemplateRecipients : cfg.max_recipients_per_message;
    if (static_cast<size_t>(req.recipients_size()) > max_rcpts) {
      return Invalid("recipients: at most " + std::to_string(max_rcpts) + (templated ? " per call" : " per message"));
    }
    if (!req.sender().empty() && (req.sender().find('@') == std::string::npos || req.sender().size() > 320 ||
                                  req.sender().find_first_of("<> \t\r\n") != std::string::npos)) {
      return Invalid("sender: '" + req.sender() + "' is not an address");
    }
    if (req.envid().size() > 100) return Invalid("envid: at most 100 characters");
    if (!templated && req.message().size() > cfg.max_message_size) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "message: " + std::to_string(req.message().size()) +
                                                                    " bytes, the limit is " +
                                                                    std::to_string(cfg.max_message_size));
    }
    if (Verdict v = policy->CheckSender(req.sender()); v.rejected()) {
      log::Mail("inject", "reject: sender <" + req.sender() + "> from " + who + ": " + v.reply + " (" + v.why + ")");
      if (c_.observer) c_.observer->OnReject(v.reason, std::atoi(v.reply.c_str()));
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, v.reply);
    }
    // Recipients: the RCPT checks, as an authenticated client.
    struct Accepted {
      std::string address;                // as requested
      std::vector<std::string> expanded;  // after aliases and virtusertable
      const v1::InjectRecipient* r;
    };
    std::vector<Accepted> accepted;
    bool discard = false;
    for (const auto& r : req.recipients()) {
      const std::string& a = r.address();
      if (a.empty() || a.size() > 320 || a.find('@') == std::string::npos ||
          a.find_first_of("<> \t\r\n") != std::string::npos) {
        return Invalid("recipients: '" + a + "' is not an address");
      }
      RecipientVerdict v = policy->CheckRecipient(a, true);
      std::string reply = v.rejected() ? v.reply : "";
      RejectReason reason = v.reason;
      if (reply.empty() && c_.suppressions && c_.suppressions->Contains(a)) {
        reply = "550 5.1.1 <" + a + ">: Recipient address rejected: on the suppression list (it bounced)";
        reason = RejectReason::kSuppressed;
      }
      if (!reply.empty()) {
        log::Mail(
            "inject",
            std::string("reject: recipient <").append(a).append("> from ").append(who).append(": ").append(reply));
        if (c_.observer) c_.observer->OnReject(reason, std::atoi(reply.c_str()));
        auto* rej = resp->add_rejected();
        rej->set_address(a);
        rej->set_reply(reply);
        continue;
      }
      if (v.kind == Verdict::Kind::kDiscard) discard = true;
      accepted.push_back(Accepted{a, v.addresses, &r});
    }
    if (accepted.empty()) return grpc::Status::OK;

    // The messages: one for every recipient from a template, else one for all.
    std::map<std::string, std::string> base(req.variables().begin(), req.variables().end());
    std::vector<Pending> pending;
    const int64_t now = c_.clock->NowUnixMicros();
    auto make = [&](const std::string& data, const std::vector<const Accepted*>& rcpts) -> grpc::Status {
      Pending p;
      const std::string qid = c_.qids->Next();
      if (Verdict h = policy->CheckHeaders(data); h.rejected()) {
        for (const auto* a : rcpts) {
          auto* rej = resp->add_rejected();
          rej->set_address(a->address);
          rej->set_reply(h.reply);
        }
        if (c_.observer) c_.observer->OnReject(h.reason, std::atoi(h.reply.c_str()));
        log::Mail(qid, "reject: header from inject " + who + ": " + h.reply + " (" + h.why + ")");
        return grpc::Status::OK;
      }
      const std::string peer = ctx.peer();
      const std::string received = "Received: from " + who + " (inject " + peer + ")\r\n\tby " + cfg.hostname + " (" +
                                   c_.node_name + ") with HTTP id " + qid + "; " + Rfc5322Date(now) + "\r\n";
      auto assembled = AssembleMessage(*policy, data, received, qid, cfg.hostname, true, now, c_.observer);
      if (!assembled.ok()) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "DKIM signing failed: " + assembled.status().message());
      }
      auto* env = p.message.mutable_envelope();
      env->set_qid(qid);
      env->set_sender(req.sender());
      env->set_size(assembled->body.size());
      env->set_arrival_unix_us(now);
      env->set_precedence_class(assembled->facts.precedence_class);
      env->set_client_name("inject");
      env->set_client_addr(peer);
      env->set_auth_id(who);
      env->set_envid(req.envid());
      env->set_body_type(Ascii(data) ? "7BIT" : "8BITMIME");
      env->set_received_by(c_.node_name);
      env->set_msgid(assembled->msgid);
      env->set_mailer_from("esmtp");
      std::set<std::string> seen;
      for (const auto* a : rcpts) {
        p.rcpts.push_back(a->address);
        for (const auto& x : a->expanded) {
          if (!seen.insert(x).second) continue;
          auto* rr = p.message.add_recipients();
          rr->set_address(x);
          if (x != a->address) rr->set_orcpt("rfc822;" + a->address);
        }
      }
      p.log_line = "from=<" + req.sender() + ">, size=" + std::to_string(assembled->body.size()) +
                   ", class=" + std::to_string(assembled->facts.precedence_class) +
                   ", nrcpts=" + std::to_string(p.message.recipients_size()) + ", msgid=" + assembled->msgid +
                   ", proto=INJECT, relay=inject [" + peer + "], auth=" + who + assembled->dkim_log;
      p.qid = qid;
      p.size = assembled->body.size();
      p.message.set_body(std::move(assembled->body));
      pending.push_back(std::move(p));
      return grpc::Status::OK;
    };
    if (templated) {
      for (const auto& a : accepted) {
        std::map<std::string, std::string> vars = base;
        for (const auto& [k, v] : a.r->variables()) vars[k] = v;
        vars["to"] = a.address;
        auto msg = BuildTemplateMessage(req.template_(), vars, "=_mx_" + c_.qids->Next(), now);
        if (!msg.ok()) return Invalid(msg.status().message() + " (recipient " + a.address + ")");
        if (msg->size() > cfg.max_message_size) {
          return grpc::Status(
              grpc::StatusCode::RESOURCE_EXHAUSTED,
              "the message for " + a.address + " is over " + std::to_string(cfg.max_message_size) + " bytes");
        }
        if (auto st = make(*msg, {&a}); !st.ok()) return st;
      }
    } else {
      auto data = Crlf(req.message(), "message");
      if (!data.ok()) return Invalid(data.status().message());
      if (ScanHeaders(*data).header_bytes == 0) return Invalid("message: no header fields");
      std::vector<const Accepted*> all;
      all.reserve(accepted.size());
      for (const auto& a : accepted) all.push_back(&a);
      if (auto st = make(*data, all); !st.ok()) return st;
    }
    if (discard) {  // an access DISCARD: accepted and dropped, as in SMTP
      for (auto& p : pending) {
        log::Mail(p.qid, "discarded: from=<" + req.sender() + ">, inject " + who);
        if (c_.observer) c_.observer->OnDiscard();
        resp->add_qids(p.qid);
        resp->set_accepted(resp->accepted() + static_cast<uint32_t>(p.rcpts.size()));
      }
      return grpc::Status::OK;
    }
    // Enqueue them all at once, then wait: OK only after each committed.
    const auto start = std::chrono::steady_clock::now();
    for (auto& p : pending) {
      auto promise = std::make_shared<std::promise<Status>>();
      p.done = promise->get_future();
      c_.backend->Enqueue(std::move(p.message), [promise](Status st) { promise->set_value(std::move(st)); });
    }
    for (auto& p : pending) {
      Status st = p.done.wait_until(start + c_.enqueue_timeout + std::chrono::seconds(5)) == std::future_status::ready
                      ? p.done.get()
                      : Status(Code::kDeadlineExceeded, "enqueue timed out");
      const std::string& qid = p.qid;
      if (st.ok() || st.code() == Code::kAlreadyExists) {
        log::Mail(qid, p.log_line);
        Probe::Get().Accepted(p.size, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        resp->add_qids(qid);
        resp->set_accepted(resp->accepted() + static_cast<uint32_t>(p.rcpts.size()));
        continue;
      }
      const bool storage = st.code() == Code::kResourceExhausted;
      const std::string reply =
          storage ? "452 4.3.1 Insufficient system storage" : "451 4.3.0 Error: queue unavailable, try again later";
      log::Mail(qid, "reject: inject " + who + ": queue " + (storage ? "storage low" : "unavailable") + " (" +
                         st.ToString() + ")");
      if (!templated) {
        return grpc::Status(storage ? grpc::StatusCode::RESOURCE_EXHAUSTED : grpc::StatusCode::UNAVAILABLE, reply);
      }
      for (const auto& a : p.rcpts) {  // the client may retry exactly these
        auto* rej = resp->add_rejected();
        rej->set_address(a);
        rej->set_reply(reply);
      }
    }
    return grpc::Status::OK;
  }

  InjectContext c_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeInjectService(InjectContext context) {
  return std::make_unique<InjectService>(std::move(context));
}

}  // namespace mx::ingress
