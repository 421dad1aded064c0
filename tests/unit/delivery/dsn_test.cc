// dsn_test.cc — RFC 3464 bounces as golden files; when no DSN is due.
#include <gtest/gtest.h>

#include "../golden.h"
#include "dsn.h"

namespace mx::delivery {
namespace {

DsnInput Input() {
  DsnInput in;
  in.original.set_qid("0Ab3xYzQ1bR2kP");
  in.original.set_sender("alice@example.test");
  in.original.set_arrival_unix_us(1'800'000'000'000'000);
  in.original.set_client_addr("192.0.2.7");
  in.original.set_client_name("client.example.test");
  in.original_body = "Received: from x\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n\r\nHi Bob.\r\n";
  in.rcpts.push_back(DsnRecipient{"bob@remote.test", "", "5.1.1", "mx1.remote.test. [127.0.0.2]",
                                  "550 5.1.1 <bob@remote.test>: Recipient address rejected"});
  in.reporting_mta = "mx.example.test";
  in.dsn_qid = "0Ab3xYzQ2cS3lQ";
  in.now_unix_us = 1'800'000'060'000'000;
  return in;
}

TEST(Dsn, FullReturn) {
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(Input(), &m));
  EXPECT_EQ(m.envelope().sender(), "");
  EXPECT_TRUE(m.envelope().is_dsn());
  ASSERT_EQ(m.recipients_size(), 1);
  EXPECT_EQ(m.recipients(0).address(), "alice@example.test");
  EXPECT_EQ(m.envelope().size(), m.body().size());
  test::ExpectGolden("delivery/golden/dsn_full.ref", m.body());
}

// Found by tests/fuzz/dsn_fuzz: a remote reply, ORCPT or host name holding a
// CR, LF, NUL or 8-bit octet went into the report as it was — a bare line end
// in a value starts a field of the remote's choosing — and a long reply made
// a line past 998 octets.
TEST(Dsn, ValuesFromStrangersCannotBreakTheReport) {
  auto in = Input();
  in.rcpts[0].diagnostic =
      std::string("550 5.1.1 no\rBcc: victim@example.test\n") + '\0' + '\xff' + std::string(3000, 'x');
  in.rcpts[0].orcpt = "rfc822;bob@remote.test\r\nX-Forged: yes";
  in.rcpts[0].remote_mta = "mx1.remote.test\r\nX-Forged: too";
  in.original.set_envid("env\nX-Forged: envid");
  in.original.set_client_name("client\r\n\r\n--boundary");
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(in, &m));
  const std::string& b = m.body();
  const auto returned = b.find("Content-Type: message/rfc822");
  ASSERT_NE(returned, std::string::npos);
  const std::string own = b.substr(0, returned);
  for (size_t i = 0; i < own.size(); ++i) {
    const auto c = static_cast<unsigned char>(own[i]);
    if (c == '\n') {
      ASSERT_EQ(own[i - 1], '\r') << "bare LF at " << i;
    }
    if (c == '\r') {
      ASSERT_EQ(own[i + 1], '\n') << "bare CR at " << i;
    }
    ASSERT_TRUE(c == '\r' || c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) << "octet " << int(c) << " at " << i;
  }
  size_t start = 0;
  for (size_t nl; (nl = own.find("\r\n", start)) != std::string::npos; start = nl + 2) {
    EXPECT_LE(nl - start, 998u);
    const std::string line = own.substr(start, nl - start);
    EXPECT_NE(line.rfind("Bcc:", 0), 0u) << line;
    EXPECT_NE(line.rfind("X-Forged:", 0), 0u) << line;
  }
  EXPECT_NE(own.find("Diagnostic-Code: smtp; 550 5.1.1 no Bcc: victim@example.test  ?xxx"), std::string::npos);
  EXPECT_NE(own.find("xxx...\r\n"), std::string::npos);  // cut, and said so
  EXPECT_NE(own.find("Original-Recipient: rfc822; bob@remote.test  X-Forged: yes\r\n"), std::string::npos);
}

TEST(Dsn, BulkPrecedenceReturnsHeadersOnly) {
  auto in = Input();
  in.original.set_precedence_class(-60);
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(in, &m));
  EXPECT_NE(m.body().find("text/rfc822-headers"), std::string::npos);
  EXPECT_EQ(m.body().find("Hi Bob."), std::string::npos);
  test::ExpectGolden("delivery/golden/dsn_headers.ref", m.body());
}

TEST(Dsn, NeverToTheNullSender) {
  auto in = Input();
  in.original.set_sender("");
  v1::NewMessage m;
  EXPECT_FALSE(BuildDsn(in, &m));
}

TEST(Dsn, DelayWarningReturnsHeadersAndSaysUntilWhen) {
  auto in = Input();
  in.action = DsnAction::kDelayed;
  in.rcpts[0].status = "4.4.1";
  in.rcpts[0].diagnostic = "Connection refused by mx1.remote.test. [127.0.0.2]";
  in.rcpts[0].orcpt = "rfc822;bob+2Bold@remote.test";
  in.queue_warn_us = 4LL * 3600 * 1'000'000;
  in.retry_until_us = in.original.arrival_unix_us() + 5LL * 86400 * 1'000'000;
  in.original.set_envid("ENV+2B1");
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(in, &m));
  test::ExpectGolden("delivery/golden/dsn_delayed.ref", m.body());
}

TEST(Dsn, RelayedReceiptForNotifySuccess) {
  auto in = Input();
  in.action = DsnAction::kRelayed;
  in.rcpts[0].status = "2.0.0";
  in.rcpts[0].diagnostic = "250 2.0.0 Ok: queued as ABC";
  v1::NewMessage m;
  ASSERT_TRUE(BuildDsn(in, &m));
  test::ExpectGolden("delivery/golden/dsn_relayed.ref", m.body());
}

TEST(Dsn, DoubleBounceGoesToThePostmasterOnce) {
  auto in = Input();
  in.original.set_sender("");
  in.original.set_is_dsn(true);
  v1::NewMessage m;
  ASSERT_TRUE(BuildDoubleBounce(in, "postmaster", &m));
  EXPECT_EQ(m.recipients(0).address(), "postmaster@mx.example.test");
  EXPECT_TRUE(m.envelope().double_bounce());
  EXPECT_NE(m.body().find("Subject: Postmaster notify"), std::string::npos);
  EXPECT_NE(m.body().find("text/rfc822-headers"), std::string::npos);
  EXPECT_EQ(m.body().find("Hi Bob."), std::string::npos);
  // A double bounce that bounces is dropped; so is everything without an address.
  in.original.set_double_bounce(true);
  EXPECT_FALSE(BuildDoubleBounce(in, "postmaster", &m));
  in.original.set_double_bounce(false);
  EXPECT_FALSE(BuildDoubleBounce(in, "", &m));
}

TEST(Dsn, NotifyRules) {
  v1::Envelope env;
  env.set_sender("alice@example.test");
  using A = DsnAction;
  struct Case {
    uint32_t notify;
    int precedence;
    bool failed, delayed, relayed;
  };
  const Case cases[] = {
      {0, 0, true, true, false},                                         // default FAILURE,DELAY
      {v1::NOTIFY_NEVER, 0, false, false, false},                        // NEVER
      {v1::NOTIFY_SUCCESS, 0, false, false, true},                       // only SUCCESS
      {v1::NOTIFY_FAILURE | v1::NOTIFY_SUCCESS, 0, true, false, true},   //
      {v1::NOTIFY_DELAY, 0, false, true, false},                         //
      {0, -60, true, false, false},                                      // bulk: no delay warning
      {v1::NOTIFY_DELAY | v1::NOTIFY_FAILURE, -30, true, false, false},  // list
  };
  for (const auto& c : cases) {
    env.set_precedence_class(c.precedence);
    EXPECT_EQ(DsnWanted(env, c.notify, A::kFailed), c.failed) << c.notify << " " << c.precedence;
    EXPECT_EQ(DsnWanted(env, c.notify, A::kDelayed), c.delayed) << c.notify << " " << c.precedence;
    EXPECT_EQ(DsnWanted(env, c.notify, A::kRelayed), c.relayed) << c.notify << " " << c.precedence;
  }
  env.set_sender("");  // <>: never
  env.set_precedence_class(0);
  EXPECT_FALSE(DsnWanted(env, 0, A::kFailed));
  EXPECT_FALSE(DsnWanted(env, v1::NOTIFY_SUCCESS, A::kRelayed));
}

TEST(Dsn, QueueWarnAndQueueReturnTiming) {
  constexpr int64_t kH = 3600LL * 1'000'000;
  const int64_t warn = kH * 4, ret = kH * 5 * 24;
  v1::Envelope env;
  env.set_sender("a@sender.test");
  v1::Recipient rc;
  rc.set_address("b@example.test");
  auto settle = [&](v1::Outcome o, int64_t age, bool forwarded = false) {
    std::string reply = "451 4.4.1 no answer", status = "4.4.1";
    auto owed = SettleOutcome(env, rc, forwarded, age, warn, ret, &o, &reply, &status);
    return std::make_tuple(owed, o, reply, status);
  };
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DEFERRED, warn - 1)), DsnOwed::kNone);  // too early to warn
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DEFERRED, warn)), DsnOwed::kDelayed);
  rc.set_delay_warned(true);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DEFERRED, warn + kH)), DsnOwed::kNone);  // once per recipient
  auto [owed, outcome, reply, status] = settle(v1::OUTCOME_DEFERRED, ret);          // Timeout.queuereturn
  EXPECT_EQ(owed, DsnOwed::kFailed);
  EXPECT_EQ(outcome, v1::OUTCOME_BOUNCED);
  EXPECT_EQ(status, "4.4.7");
  EXPECT_EQ(reply, "Cannot send message for 5+00:00:00 (last: 451 4.4.1 no answer)");
  rc.set_delay_warned(false);

  rc.set_notify(v1::NOTIFY_NEVER);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DEFERRED, ret)), DsnOwed::kNone);  // still bounced, silently
  rc.set_notify(v1::NOTIFY_SUCCESS);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DELIVERED, 0)), DsnOwed::kRelayed);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DELIVERED, 0, true)), DsnOwed::kNone);  // the next hop reports
  rc.set_notify(0);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DELIVERED, 0)), DsnOwed::kNone);

  env.set_precedence_class(-30);  // Precedence: bulk: no delay warnings, bounces still
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_DEFERRED, warn)), DsnOwed::kNone);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_BOUNCED, 0)), DsnOwed::kFailed);
  env.set_precedence_class(0);
  env.set_sender("");  // a DSN that bounced owes the double bounce, whatever NOTIFY says
  env.set_is_dsn(true);
  rc.set_notify(v1::NOTIFY_NEVER);
  EXPECT_EQ(std::get<0>(settle(v1::OUTCOME_BOUNCED, 0)), DsnOwed::kFailed);
}

}  // namespace
}  // namespace mx::delivery
