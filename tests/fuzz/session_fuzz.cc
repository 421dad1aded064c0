// session_fuzz.cc — libFuzzer target: a whole SMTP dialogue, DATA included,
// through ingress::Session (the server's logic without I/O). The input is cut
// into lines as the server cuts them (after LF; a fragment without one is
// sent as a partial line), every step the session asks for is answered
// (enqueue OK, AUTH verified or refused as the first byte says, TLS
// "started", ETRN 0), so the fuzzer reaches AUTH PLAIN/LOGIN decoding and the
// throttle's refusal, dot-unstuffing, bare CR/LF checks, size limits, header
// rules and limits.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "session.h"

namespace {

std::shared_ptr<const mx::ingress::Policy> MakePolicy() {
  mx::IngressConfig c;
  c.hostname = "mx.fuzz.test";
  c.max_message_size = 4096;
  c.max_recipients_per_message = 5;
  c.max_line_length = 512;
  c.mynetworks = {"127.0.0.0/8"};
  c.relay_domains = {"relay.test"};
  c.local_domains = {"corp.test"};
  c.header_checks = {{"Subject", "regex", "^((re|fwd?): *)*ILOVEYOU", "501 5.7.1 LoveLetter"},
                     {"X-Mailer", "prefix", "BadMailer", "550 5.7.1 Mailer not accepted"}};
  // AUTH is offered: a users file of one (the hash is never checked here).
  const std::string users = "/tmp/mx-session-fuzz-users";
  if (FILE* f = fopen(users.c_str(), "w")) {
    fputs("alice:$6$alicesalt$MZ0Qi4h0IzF2XDiaLRaObma36mftDpVab4hCPKo.jBBNlb0n.6OxPAhZSkBkEdse32VUN3XiFVUa8E4ua0nXE.\n",
          f);
    fclose(f);
  }
  c.auth_users_file = users;
  c.auth_over_plaintext = true;
  auto p = mx::ingress::Policy::Load(c, ".");
  return p.ok() ? *p : nullptr;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto policy = MakePolicy();
  static mx::QidGenerator qids(mx::SystemClock::Instance(), 1);
  if (!policy) __builtin_trap();
  mx::ingress::SessionOptions opts;
  opts.tls_available = true;
  opts.auth_available = policy->auth_users() != nullptr;
  // The first byte picks the client: trusted (mynetworks) or not.
  mx::ingress::ClientInfo client{size > 0 && (data[0] & 1) ? "127.0.0.1" : "192.0.2.9", "client.test"};
  mx::ingress::Session s(policy, opts, client, mx::SystemClock::Instance(), qids);
  s.Start(policy->CheckConnect(client));
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using Step = mx::ingress::Session::Step;
  while (!in.empty()) {
    size_t nl = in.find('\n');
    bool partial = nl == std::string_view::npos;
    std::string_view line = partial ? in : in.substr(0, nl + 1);
    in.remove_prefix(line.size());
    Step step = s.OnLine(line, partial);
    for (int guard = 0; step != Step::kContinue && step != Step::kClose && guard < 8; ++guard) {
      switch (step) {
        case Step::kEnqueue:
          (void)s.TakeMessage();
          step = s.OnEnqueued(mx::Status::Ok());
          break;
        case Step::kAuthenticate:
          // The second bit of the first byte: the password was right; the
          // third: the throttle refuses before any check.
          if (size > 0 && (data[0] & 4)) {
            step = s.OnAuthThrottled((data[0] & 8) != 0);
          } else {
            step = s.OnAuthResult(size > 0 && (data[0] & 2));
          }
          break;
        case Step::kEtrn: step = s.OnEtrnResult(uint64_t{0}); break;
        case Step::kStartTls:
          s.OnTlsStarted();
          step = Step::kContinue;
          break;
        default: step = Step::kContinue; break;
      }
    }
    s.output().clear();
    if (step == Step::kClose) break;
  }
  return 0;
}
