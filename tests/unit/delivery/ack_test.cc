// ack_test.cc — one message's Ack (outcomes settled against the queue's
// timeouts, DSNs queued with it, hard bounces for the suppression list) and
// the Ack sender (coalescing while two are outstanding, credits per request,
// retries, a refused merged request resent one by one) against a fake queue.
#include <gtest/gtest.h>

#include <atomic>

#include "ack_builder.h"
#include "ack_sender.h"
#include "fakes.h"

namespace mx::delivery {
namespace {

using namespace std::chrono_literals;
using testing::FakeQueue;

class AckBuilderTest : public ::testing::Test {
 protected:
  AckBuilderTest() {
    options_.hostname = "mx.self.test";
    options_.worker_id = "w1";
    auto* env = msg_.mutable_envelope();
    env->set_qid("Q1");
    env->set_sender("s@sender.test");
    env->set_size(100);
    env->set_arrival_unix_us(clock_.NowUnixMicros());
    msg_.set_body("From: s@sender.test\r\nSubject: t\r\n\r\nhi\r\n");
    for (int i = 0; i < 2; ++i) {
      auto* r = msg_.add_recipients();
      r->set_index(i);
      r->set_address("r" + std::to_string(i) + "@example.net");
    }
  }
  static Outcome Of(v1::Outcome o, const std::string& reply, const std::string& dsn, const std::string& relay = "") {
    return Outcome{RcptOutcome{o, reply, dsn}, relay, false, "", false};
  }
  v1::AckRequest Build(const std::vector<Outcome>& outs, v1::SuppressRequest* suppress = nullptr) {
    AckBuilder b(options_, clock_, qids_, msg_);
    for (size_t i = 0; i < outs.size(); ++i) b.Add(msg_.recipients(static_cast<int>(i)), outs[i], info_);
    auto ack = b.Finish();
    if (suppress) *suppress = b.TakeSuppressions();
    return ack;
  }

  FakeClock clock_;
  QidGenerator qids_{clock_, 7};
  AckBuilder::Options options_;
  AttemptInfo info_{"example.net", "esmtp", "", "", 1000, std::chrono::steady_clock::now()};
  v1::LeasedMessage msg_;
};

TEST_F(AckBuilderTest, DeliveredRecipientsOweNoDsnAndCountTheirBytes) {
  auto ack = Build({Of(v1::OUTCOME_DELIVERED, "250 ok", "2.0.0", "mx [127.0.0.2]"),
                    Of(v1::OUTCOME_DELIVERED, "250 ok", "2.0.0", "mx [127.0.0.2]")});
  EXPECT_EQ(ack.worker(), "w1");
  ASSERT_EQ(ack.results_size(), 2);
  EXPECT_EQ(ack.results(1).index(), 1u);
  EXPECT_EQ(ack.results(0).bytes(), 100u);
  EXPECT_EQ(ack.results(0).mailer(), "esmtp");
  EXPECT_EQ(ack.dsns_size(), 0);
}

TEST_F(AckBuilderTest, BouncesOweOneDsnToTheSenderAndThePostmasterItsCopy) {
  auto ack = Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 no such user", "5.1.1", "mx [127.0.0.2]"),
                    Of(v1::OUTCOME_BOUNCED, "550 5.1.1 no such user", "5.1.1", "mx [127.0.0.2]")});
  ASSERT_EQ(ack.dsns_size(), 1);
  EXPECT_EQ(ack.dsns(0).recipients(0).address(), "s@sender.test");
  EXPECT_EQ(ack.dsns(0).envelope().sender(), "");
  options_.postmaster_copy = "postmaster@self.test";
  ack = Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 no such user", "5.1.1")});
  ASSERT_EQ(ack.dsns_size(), 2);
  EXPECT_EQ(ack.dsns(1).recipients(0).address(), "postmaster@self.test");
}

TEST_F(AckBuilderTest, ABounceOfABounceGoesToTheDoubleBounceAddress) {
  msg_.mutable_envelope()->set_sender("");
  msg_.mutable_envelope()->set_is_dsn(true);
  options_.double_bounce_address = "postmaster@self.test";
  auto ack = Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 no such user", "5.1.1")});
  ASSERT_EQ(ack.dsns_size(), 1);
  EXPECT_EQ(ack.dsns(0).recipients(0).address(), "postmaster@self.test");
  options_.double_bounce_address = "";
  EXPECT_EQ(Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 no such user", "5.1.1")}).dsns_size(), 0);
}

TEST_F(AckBuilderTest, AnOldDeferralWarnsOnceAndAnExpiredOneBounces) {
  clock_.Advance(std::chrono::duration_cast<std::chrono::microseconds>(options_.queue_warn + 1s));
  auto ack = Build({Of(v1::OUTCOME_DEFERRED, "451 4.3.0 later", "4.3.0")});
  EXPECT_EQ(ack.results(0).outcome(), v1::OUTCOME_DEFERRED);
  EXPECT_TRUE(ack.results(0).delay_warned());
  ASSERT_EQ(ack.dsns_size(), 1);
  msg_.mutable_recipients(0)->set_delay_warned(true);
  EXPECT_EQ(Build({Of(v1::OUTCOME_DEFERRED, "451 4.3.0 later", "4.3.0")}).dsns_size(), 0);
  clock_.Advance(std::chrono::duration_cast<std::chrono::microseconds>(options_.queue_return));
  ack = Build({Of(v1::OUTCOME_DEFERRED, "451 4.3.0 later", "4.3.0")});
  EXPECT_EQ(ack.results(0).outcome(), v1::OUTCOME_BOUNCED);
  EXPECT_EQ(ack.results(0).dsn_status(), "4.4.7");
  EXPECT_EQ(ack.dsns_size(), 1);
}

TEST_F(AckBuilderTest, OnlyHardBouncesTheDestinationAnsweredGoOnTheSuppressionList) {
  options_.suppress_hard_bounces = true;
  v1::SuppressRequest sup;
  Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 <r0@example.net>: user unknown", "5.1.1", "mx [127.0.0.2]"),
         Of(v1::OUTCOME_BOUNCED, "552 5.2.2 mailbox full", "5.2.2", "mx [127.0.0.2]")},
        &sup);
  ASSERT_EQ(sup.add_size(), 1);
  EXPECT_EQ(sup.add(0).address(), "r0@example.net");
  EXPECT_EQ(sup.add(0).bounce_class(), "invalid_recipient");
  EXPECT_EQ(sup.add(0).by(), "w1 (Q1)");
  // Not answered by the destination (no relay): e.g. mxctl bounce or a mailertable error.
  Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 user unknown", "5.1.1")}, &sup);
  EXPECT_EQ(sup.add_size(), 0);
  options_.suppress_hard_bounces = false;
  Build({Of(v1::OUTCOME_BOUNCED, "550 5.1.1 user unknown", "5.1.1", "mx [127.0.0.2]")}, &sup);
  EXPECT_EQ(sup.add_size(), 0);
}

v1::AckRequest OneAck(const std::string& qid) {
  v1::AckRequest a;
  a.set_worker("w1");
  auto* r = a.add_results();
  r->set_qid(qid);
  r->set_outcome(v1::OUTCOME_DELIVERED);
  return a;
}

class AckSenderTest : public ::testing::Test {
 protected:
  void Credit(uint32_t shard, uint32_t n) {
    std::lock_guard lock(mu_);
    credits_.emplace_back(shard, n);
  }
  std::vector<std::pair<uint32_t, uint32_t>> Credits() {
    std::lock_guard lock(mu_);
    return credits_;
  }
  std::vector<int> Sizes() {
    std::lock_guard lock(queue_.mu);
    std::vector<int> sizes;
    for (const auto& c : queue_.answered) sizes.push_back(c.req->results_size());
    return sizes;
  }

  FakeQueue queue_{2};
  std::mutex mu_;
  std::vector<std::pair<uint32_t, uint32_t>> credits_;
  AckSender sender_{queue_, "w1", [this](uint32_t s, uint32_t n) { Credit(s, n); }};
};

TEST_F(AckSenderTest, AcksFinishedWhileTwoAreOutstandingLeaveTogether) {
  queue_.hold = true;
  for (int i = 0; i < 10; ++i) sender_.Send(1, OneAck("Q" + std::to_string(i)));
  EXPECT_EQ(queue_.Held(), 2u);  // two singles; eight wait
  queue_.hold = false;
  ASSERT_TRUE(queue_.AnswerOne());  // its completion sends the eight as one
  ASSERT_TRUE(queue_.AnswerOne());
  ASSERT_TRUE(sender_.WaitIdle(2s));
  EXPECT_EQ(Sizes(), (std::vector<int>{1, 8, 1}));
  uint32_t total = 0;
  for (auto [shard, n] : Credits()) {
    EXPECT_EQ(shard, 1u);
    total += n;
  }
  EXPECT_EQ(total, 10u);
  EXPECT_EQ(Credits().size(), 3u);  // one credit return per request
  std::lock_guard lock(queue_.mu);
  EXPECT_EQ(queue_.answered[1].req->shard(), 1u);
  EXPECT_EQ(queue_.answered[1].req->worker(), "w1");
}

TEST_F(AckSenderTest, AMergedRequestTheQueueRefusesIsResentOneDeliveryAtATime) {
  queue_.hold = true;
  for (int i = 0; i < 5; ++i) sender_.Send(0, OneAck("Q" + std::to_string(i)));
  queue_.verdict = [](const v1::AckRequest& r) {
    return std::pair{r.results_size() > 1 ? grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no") : grpc::Status::OK,
                     false};
  };
  queue_.hold = false;
  queue_.AnswerOne();
  queue_.AnswerOne();
  ASSERT_TRUE(sender_.WaitIdle(2s));
  EXPECT_EQ(Sizes(), (std::vector<int>{1, 3, 1, 1, 1, 1}));
  uint32_t total = 0;
  for (auto [shard, n] : Credits()) total += n;
  EXPECT_EQ(total, 5u);
}

TEST_F(AckSenderTest, ANewLeaderIsTriedAtOnceAndAVerdictIsFinal) {
  std::atomic<int> calls{0};  // the verdict runs on gRPC alarm threads too
  queue_.verdict = [&](const v1::AckRequest&) {
    ++calls;
    if (calls == 1) return std::pair{grpc::Status(grpc::StatusCode::UNAVAILABLE, "not the leader"), true};
    if (calls == 2) return std::pair{grpc::Status::OK, false};
    return std::pair{grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "lease gone"), false};
  };
  sender_.Send(0, OneAck("Q1"));
  ASSERT_TRUE(sender_.WaitIdle(2s));
  EXPECT_EQ(calls.load(), 2);
  sender_.Send(0, OneAck("Q2"));  // refused: given up on (the lease expires), its credit back
  ASSERT_TRUE(sender_.WaitIdle(2s));
  EXPECT_EQ(calls.load(), 3);
  EXPECT_EQ(Credits().size(), 2u);
}

TEST_F(AckSenderTest, AfterStopATransientFailureIsNotRetried) {
  std::atomic<int> calls{0};  // the verdict runs on gRPC alarm threads too
  queue_.verdict = [&](const v1::AckRequest&) {
    ++calls;
    return std::pair{grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), false};
  };
  sender_.Stop();
  sender_.Send(0, OneAck("Q1"));
  ASSERT_TRUE(sender_.WaitIdle(2s));
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(Credits().size(), 1u);
}

TEST_F(AckSenderTest, ATransientFailureIsRetriedAfterAPause) {
  std::atomic<int> calls{0};  // the verdict runs on gRPC alarm threads too
  queue_.verdict = [&](const v1::AckRequest&) {
    ++calls;
    return std::pair{calls < 3 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "down") : grpc::Status::OK, false};
  };
  sender_.Send(0, OneAck("Q1"));
  ASSERT_TRUE(sender_.WaitIdle(5s));
  EXPECT_EQ(calls.load(), 3);
}

}  // namespace
}  // namespace mx::delivery
