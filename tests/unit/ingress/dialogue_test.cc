// dialogue_test.cc — SMTP dialogues as golden files.
//
// Each dialogues/NAME.in is replayed through ingress::Session exactly as the
// server feeds it: every line is sent with CRLF, except directives:
//   !client IP          client address (before the first line; default 127.0.0.1)
//   !enqueue CODE       the next Enqueue answers with this status (OK, UNAVAILABLE, ALREADY_EXISTS,
//                       RESOURCE_EXHAUSTED)
//   !tls-unavailable    no certificate: STARTTLS not offered (before the first line)
//   !queue-only         the session runs under QueueLA
//   !storage-low        the queue refused for lack of disk lately
//   !junk-limit N       max_junk_commands
// STARTTLS "succeeds" at once; AUTH checks the users file; ETRN reports 2
// recipients for relay.test and none otherwise.
//   !raw TEXT           send TEXT with \r \n \\ escapes decoded and no CRLF added
//   !timeout            the idle timer fires
// Lines starting with # are comments; empty lines are sent as empty lines.
// The transcript (C:/S: lines and each enqueued message, Q:/B: lines) must equal NAME.ref.
#include <gtest/gtest.h>
#include <atomic>

#include <filesystem>

#include <algorithm>
#include <sstream>

#include "../golden.h"
#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "session.h"

namespace mx::ingress {
namespace {

std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out.push_back(c == 'r' ? '\r' : c == 'n' ? '\n' : c);
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string Visible(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\r')
      out += "\\r";
    else if (c == '\n')
      out += "\\n";
    else
      out.push_back(c);
  }
  return out;
}

// The policy every dialogue runs against: small limits, relay domains
// local.test and relay.test, a local domain corp.test with aliases, a virtual
// domain virtual.test, an access map, AUTH users and header rules (files
// under dialogues/maps/).
std::shared_ptr<const Policy> TestPolicy() {
  IngressConfig c;
  c.hostname = "mx.test";
  c.greeting = "ESMTP ready";
  c.max_message_size = 400;
  c.max_recipients_per_message = 3;
  c.max_errors = 10;
  c.mynetworks = {"127.0.0.0/8"};
  c.relay_domains = {"local.test", "relay.test"};
  c.local_domains = {"corp.test"};
  c.access_map = "access";
  c.aliases = "aliases";
  c.virtusertable = "virtusertable";
  c.auth_users_file = "users";
  c.auth_over_plaintext = false;
  c.header_checks = {
      {"Subject", "regex", "^((re|fwd?): *)*ILOVEYOU", "501 5.7.1 Subject ILOVEYOU: LoveLetter virus"},
      {"Content-Disposition", "exact", "Multipart message", "550 5.7.1 Sircam virus detected"},
      {"Content-Type", "regex", "boundary=\"?====_ABC1234567890DEF_====", "550 5.7.1 Nimda virus detected"},
      {"X-Mailer", "prefix", "BadMailer", "550 5.7.1 Mailer not accepted"},
  };
  c.max_hop_count = 5;
  auto p = Policy::Load(c, test::DataPath("ingress/dialogues/maps"));
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? *p : nullptr;
}

class Runner {
 public:
  explicit Runner(const std::string& script) : script_(script) {}

  std::string Run() {
    std::istringstream in(script_);
    std::string line, client = "127.0.0.1";
    std::vector<std::string> lines;
    SessionOptions opts;
    opts.node_name = "mx-test";
    opts.tls_available = true;
    opts.auth_available = true;
    opts.draining = &draining_;
    while (std::getline(in, line)) {
      if (line.rfind("!client ", 0) == 0)
        client = line.substr(8);
      else if (line == "!tls-unavailable")
        opts.tls_available = false;
      else if (line == "!queue-only")
        opts.queue_only = true;
      else if (line == "!storage-low")
        opts.storage_low = true;
      else if (line.rfind("!junk-limit ", 0) == 0)
        opts.max_junk_commands = static_cast<uint32_t>(std::stoul(line.substr(12)));
      else if (line.empty() || line[0] != '#')
        lines.push_back(line);  // empty lines are DATA content
    }
    auto policy = TestPolicy();
    if (!policy) return "no policy";
    ClientInfo info{client, "client.test"};
    Verdict connect = policy->CheckConnect(info);
    Session s(policy, opts, info, clock_, qids_);
    s.Start(connect);
    Flush(s);
    for (const auto& l : lines) {
      std::string raw;
      if (l == "!drain") {
        draining_ = true;  // mxctl drain reached the node mid-session
        out_ += "-- node draining --\n";
        continue;
      }
      if (l.rfind("!enqueue ", 0) == 0) {
        next_enqueue_ = l.substr(9);
        continue;
      }
      if (l == "!timeout") {
        s.OnTimeout();
        out_ += "-- timeout --\n";
        Flush(s);
        break;
      }
      if (l.rfind("!raw ", 0) == 0) {
        raw = Unescape(l.substr(5));
      } else {
        raw = l + "\r\n";
      }
      // Split into lines the way the server does (each ends with \n).
      bool closed = false;
      size_t pos = 0;
      while (pos < raw.size() && !closed) {
        size_t nl = raw.find('\n', pos);
        size_t end = nl == std::string::npos ? raw.size() : nl + 1;
        std::string_view piece(raw.data() + pos, end - pos);
        pos = end;
        out_ += (s.in_data() ? "D: " : "C: ") + Visible(piece) + "\n";
        auto step = s.OnLine(piece, nl == std::string::npos);
        while (step != Session::Step::kContinue && step != Session::Step::kClose) {
          if (step == Session::Step::kEnqueue) {
            step = Enqueue(s);
          } else if (step == Session::Step::kDiscard) {
            out_ += "-- discarded --\n";
            step = Session::Step::kContinue;
          } else if (step == Session::Step::kStartTls) {
            Flush(s);
            out_ += "-- tls handshake --\n";
            s.OnTlsStarted();
            step = Session::Step::kContinue;
          } else if (step == Session::Step::kAuthenticate) {
            bool ok = policy->auth_users()->Verify(s.auth_user(), s.auth_password());
            out_ += "-- auth " + s.auth_user() + (ok ? " ok" : " failed") + " --\n";
            step = s.OnAuthResult(ok);
          } else if (step == Session::Step::kEtrn) {
            out_ += "-- queue run " + s.etrn_domain() + " --\n";
            step =
                s.OnEtrnResult(s.etrn_domain() == "relay.test" ? Result<uint64_t>(2) : Result<uint64_t>(uint64_t{0}));
          }
        }
        Flush(s);
        if (step == Session::Step::kClose) {
          out_ += "-- closed --\n";
          closed = true;
        }
      }
      if (closed) break;
    }
    return out_;
  }

 private:
  std::atomic<bool> draining_{false};
  Session::Step Enqueue(Session& s) {
    v1::NewMessage m = s.TakeMessage();
    const auto& e = m.envelope();
    out_ += "Q: qid=" + e.qid() + " from=<" + e.sender() + "> size=" + std::to_string(e.size()) +
            " class=" + std::to_string(e.precedence_class()) + " body=" + e.body_type() + " rcpts=";
    for (const auto& r : m.recipients()) {
      out_ += "<" + r.address() + ">";
      if (r.notify() || !r.orcpt().empty()) {
        out_ += "[notify=" + std::to_string(r.notify()) + (r.orcpt().empty() ? "" : " orcpt=" + r.orcpt()) + "]";
      }
    }
    if (!e.ret().empty()) out_ += " ret=" + e.ret();
    if (!e.envid().empty()) out_ += " envid=" + e.envid();
    if (!e.auth_id().empty()) out_ += " auth=" + e.auth_id();
    if (e.queue_only()) out_ += " queue-only";
    out_ += "\n";
    std::istringstream body(m.body());
    std::string bl;
    while (std::getline(body, bl)) out_ += "B: " + Visible(bl) + "\n";
    Status st;
    if (next_enqueue_ == "UNAVAILABLE")
      st = Status(Code::kUnavailable, "no leader");
    else if (next_enqueue_ == "ALREADY_EXISTS")
      st = Status(Code::kAlreadyExists, "dup");
    else if (next_enqueue_ == "RESOURCE_EXHAUSTED")
      st = Status(Code::kResourceExhausted, "disk");
    next_enqueue_ = "OK";
    return s.OnEnqueued(st);
  }

  void Flush(Session& s) {
    std::istringstream r(s.output());
    std::string l;
    while (std::getline(r, l)) {
      if (!l.empty() && l.back() == '\r') l.pop_back();
      out_ += "S: " + l + "\n";
    }
    s.output().clear();
  }

  std::string script_;
  FakeClock clock_{1'800'000'000'000'000};
  QidGenerator qids_{clock_, 1234};
  std::string out_;
  std::string next_enqueue_ = "OK";
};

std::vector<std::string> Dialogues() {
  std::vector<std::string> names;
  std::string dir = test::DataPath("ingress/dialogues");
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (n.size() > 3 && n.substr(n.size() - 3) == ".in") names.push_back(n.substr(0, n.size() - 3));
  }
  std::sort(names.begin(), names.end());
  return names;
}

class Dialogue : public ::testing::TestWithParam<std::string> {};

TEST_P(Dialogue, MatchesGolden) {
  std::string script = test::ReadFile(test::DataPath("ingress/dialogues/" + GetParam() + ".in"));
  ASSERT_FALSE(script.empty());
  test::ExpectGolden("ingress/dialogues/" + GetParam() + ".ref", Runner(script).Run());
}

INSTANTIATE_TEST_SUITE_P(Golden, Dialogue, ::testing::ValuesIn(Dialogues()),
                         [](const auto& info) { return info.param; });

TEST(Dialogues, Present) {
  EXPECT_GE(Dialogues().size(), 8u);
}

}  // namespace
}  // namespace mx::ingress
