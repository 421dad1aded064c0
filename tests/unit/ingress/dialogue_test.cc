// dialogue_test.cc — SMTP dialogues as golden files.
//
// Each dialogues/NAME.in is replayed through ingress::Session exactly as the
// server feeds it: every line is sent with CRLF, except directives:
//   !client IP          client address (before the first line; default 127.0.0.1)
//   !enqueue CODE       the next Enqueue answers with this status (OK, UNAVAILABLE, ALREADY_EXISTS)
//   !raw TEXT           send TEXT with \r \n \\ escapes decoded and no CRLF added
//   !timeout            the idle timer fires
// Lines starting with # are comments; empty lines are sent as empty lines.
// The transcript (C:/S: lines and each enqueued message, Q:/B: lines) must equal NAME.ref.
#include <gtest/gtest.h>

#include <dirent.h>

#include <algorithm>
#include <sstream>

#include "../golden.h"
#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "mx/ingress/session.h"

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

class Runner {
 public:
  explicit Runner(const std::string& script) : script_(script) {
    config_.hostname = "mx.test";
    config_.greeting = "ESMTP ready";
    config_.max_message_size = 400;
    config_.max_recipients = 3;
    config_.max_errors = 10;
    config_.mynetworks = *CidrList::Parse({"127.0.0.0/8"});
    config_.relay_domains = {"local.test"};
    config_.node_name = "mx-test";
  }

  std::string Run() {
    std::istringstream in(script_);
    std::string line, client = "127.0.0.1";
    std::vector<std::string> lines;
    while (std::getline(in, line)) {
      if (line.rfind("!client ", 0) == 0)
        client = line.substr(8);
      else if (line.empty() || line[0] != '#')
        lines.push_back(line);  // empty lines are DATA content
    }
    Session s(config_, ClientInfo{client, "client.test"}, clock_, qids_);
    s.Start();
    Flush(s);
    for (const auto& l : lines) {
      std::string raw;
      if (l.rfind("!enqueue ", 0) == 0) {
        next_enqueue_ = l.substr(9);
        continue;
      } else if (l == "!timeout") {
        s.OnTimeout();
        out_ += "-- timeout --\n";
        Flush(s);
        break;
      } else if (l.rfind("!raw ", 0) == 0) {
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
        if (step == Session::Step::kEnqueue) step = Enqueue(s);
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
  Session::Step Enqueue(Session& s) {
    v1::NewMessage m = s.TakeMessage();
    const auto& e = m.envelope();
    out_ += "Q: qid=" + e.qid() + " from=<" + e.sender() + "> size=" + std::to_string(e.size()) +
            " class=" + std::to_string(e.precedence_class()) + " body=" + e.body_type() + " rcpts=";
    for (const auto& r : m.recipients()) out_ += "<" + r.address() + ">";
    out_ += "\n";
    std::istringstream body(m.body());
    std::string bl;
    while (std::getline(body, bl)) out_ += "B: " + Visible(bl) + "\n";
    Status st;
    if (next_enqueue_ == "UNAVAILABLE")
      st = Status(Code::kUnavailable, "no leader");
    else if (next_enqueue_ == "ALREADY_EXISTS")
      st = Status(Code::kAlreadyExists, "dup");
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
  SessionConfig config_;
  FakeClock clock_{1'800'000'000'000'000};
  QidGenerator qids_{clock_, 1234};
  std::string out_;
  std::string next_enqueue_ = "OK";
};

std::vector<std::string> Dialogues() {
  std::vector<std::string> names;
  std::string dir = test::DataPath("ingress/dialogues");
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 3 && n.substr(n.size() - 3) == ".in") names.push_back(n.substr(0, n.size() - 3));
    }
    closedir(d);
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
