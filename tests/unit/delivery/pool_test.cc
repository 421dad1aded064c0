// pool_test.cc — the permit client (rates, slots, holds and their renewal,
// failing closed) and the connection pool (reuse with RSET, slots given back
// on close, limits that throttle, a broken cached session retried fresh)
// against a fake metadata shard and fake SMTP sessions.
#include <gtest/gtest.h>

#include "connection_pool.h"
#include "fakes.h"
#include "permit_client.h"

namespace mx::delivery {
namespace {

using namespace std::chrono_literals;
using testing::Await;
using testing::FakeMetadata;
using testing::FakeNet;
namespace asio = boost::asio;

v1::PermitResponse Refused(uint32_t retry_ms) {
  v1::PermitResponse r;
  r.set_granted(false);
  r.set_retry_after_ms(retry_ms);
  return r;
}

v1::PermitKey Key(const std::string& k, uint32_t limit) {
  v1::PermitKey key;
  key.set_key(k);
  key.set_limit(limit);
  return key;
}

class PermitClientTest : public ::testing::Test {
 protected:
  FakeMetadata meta_;
  InFlightCalls calls_;
  PermitClient permits_{meta_, calls_};
  asio::io_context io_;
};

TEST_F(PermitClientTest, ARateIsAskedAgainAfterRetryAfterUntilGranted) {
  int asked = 0;
  meta_.answer = [&](const v1::PermitRequest& r) {
    EXPECT_EQ(r.op(), v1::PermitRequest::RATE);
    EXPECT_EQ(r.holds(0).keys(0).key(), "site:x");
    EXPECT_EQ(r.holds(0).keys(0).limit(), 5u);
    EXPECT_EQ(r.holds(0).keys(0).period_s(), 60u);
    if (++asked < 3) return Refused(1);
    v1::PermitResponse ok;
    ok.set_granted(true);
    return ok;
  };
  EXPECT_TRUE(Await(io_, permits_.AwaitRate("site:x", RateLimit{5, 60}, std::chrono::steady_clock::now() + 5s)));
  EXPECT_EQ(asked, 3);
}

TEST_F(PermitClientTest, ARateWhoseTurnComesAfterTheDeadlineIsRefusedWithoutWaiting) {
  meta_.answer = [](const v1::PermitRequest&) { return Refused(60'000); };
  const auto before = std::chrono::steady_clock::now();
  EXPECT_FALSE(Await(io_, permits_.AwaitRate("site:x", RateLimit{1, 60}, before + 1s)));
  EXPECT_LT(std::chrono::steady_clock::now() - before, 1s);
  EXPECT_EQ(meta_.PermitCalls(v1::PermitRequest::RATE), 1u);
}

TEST_F(PermitClientTest, AnUnreachableLeaderIsARefusal) {
  meta_.unreachable = true;
  auto a = Await(io_, permits_.Acquire("w#1", {Key("site:x", 1)}));
  EXPECT_FALSE(a.granted);
  EXPECT_EQ(a.retry_after, 500ms);
  EXPECT_EQ(permits_.holds(), 0u);
}

TEST_F(PermitClientTest, GrantedHoldsAreRenewedTogetherUntilReleased) {
  ASSERT_TRUE(Await(io_, permits_.Acquire("w#1", {Key("site:x", 2)})).granted);
  ASSERT_TRUE(Await(io_, permits_.Acquire("w#2", {Key("host:mx.example", 1)})).granted);
  EXPECT_EQ(permits_.holds(), 2u);
  permits_.RenewAll();
  {
    std::lock_guard lock(meta_.mu);
    const auto& renew = meta_.permits.back();
    EXPECT_EQ(renew.op(), v1::PermitRequest::RENEW);
    EXPECT_EQ(renew.holds_size(), 2);
    EXPECT_EQ(renew.ttl_ms(), 10'000u);
  }
  permits_.Release("w#1");
  {
    std::lock_guard lock(meta_.mu);
    EXPECT_EQ(meta_.permits.back().op(), v1::PermitRequest::RELEASE);
    EXPECT_EQ(meta_.permits.back().holds(0).holder(), "w#1");
  }
  EXPECT_EQ(permits_.holds(), 1u);
  permits_.Release("w#2");
  const size_t calls = meta_.permits.size();
  permits_.RenewAll();  // nothing held: no call
  EXPECT_EQ(meta_.permits.size(), calls);
  EXPECT_TRUE(calls_.WaitIdle(1s));
}

class PoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shape_.site = "mx:mx.example";
    shape_.key = "site:mx:mx.example";
    hop_ = Hop{&shape_, "esmtp", "mx.example", "127.0.0.2", 25};
    msg_.mutable_envelope()->set_qid("Q1");
    msg_.set_body("Subject: t\r\n\r\nhi\r\n");
  }
  ConnectionPool& Pool(size_t cache_size = 10, bool single_thread = false,
                       std::chrono::milliseconds limit_wait = 2000ms) {
    ConnectionPool::Options o;
    o.worker_id = "w";
    o.cache_size = cache_size;
    o.limit_wait = limit_wait;
    o.single_thread_delivery = single_thread;
    pool_ = std::make_unique<ConnectionPool>(io_, permits_, o, net_.Opener());
    return *pool_;
  }
  Attempt Send(ConnectionPool& pool) { return Await(io_, pool.Transact(hop_, cc_, msg_, rcpts_)); }
  void TearDown() override {
    if (pool_) {
      Await(io_, pool_->CloseAll());
      pool_->Clear();
    }
  }

  FakeMetadata meta_;
  InFlightCalls calls_;
  PermitClient permits_{meta_, calls_};
  asio::io_context io_;
  FakeNet net_;
  SiteShape shape_;
  Hop hop_;
  SmtpClientConfig cc_;
  v1::LeasedMessage msg_;
  std::vector<ClientRcpt> rcpts_{ClientRcpt{"a@example.net", 0, ""}};
  std::unique_ptr<ConnectionPool> pool_;
};

TEST_F(PoolTest, ASecondTransactionReusesTheCachedSession) {
  auto& pool = Pool();
  ASSERT_FALSE(Send(pool).try_next);
  EXPECT_EQ(pool.idle(), 1u);
  ASSERT_FALSE(Send(pool).try_next);
  EXPECT_EQ(net_.opens.size(), 1u);
  EXPECT_EQ(net_.sends.size(), 2u);
  EXPECT_EQ(net_.quits, 0);
}

TEST_F(PoolTest, SessionsAreCachedPerTlsModeAndAddress) {
  auto& pool = Pool();
  Send(pool);
  cc_.tls = SmtpClientConfig::Tls::kNone;
  Send(pool);
  hop_.ip = "127.0.0.3";
  Send(pool);
  EXPECT_EQ(net_.opens.size(), 3u);
  EXPECT_EQ(pool.idle(), 3u);
}

TEST_F(PoolTest, ASessionThePeerDroppedWhileIdleIsReplacedWithoutFailingTheHost) {
  auto& pool = Pool();
  Send(pool);
  net_.servers["127.0.0.2"].reset_ok = false;
  auto at = Send(pool);
  EXPECT_FALSE(at.try_next);
  EXPECT_EQ(net_.opens.size(), 2u);
  EXPECT_EQ(net_.quits, 1);
}

TEST_F(PoolTest, ACachedSessionThatBreaksIsTriedOnceMoreOnANewConnection) {
  auto& pool = Pool();
  Send(pool);
  Attempt broken;
  broken.try_next = true;
  broken.error = "lost connection";
  net_.servers["127.0.0.2"].sends = {broken};
  auto at = Send(pool);
  EXPECT_FALSE(at.try_next) << at.error;
  EXPECT_EQ(net_.opens.size(), 2u);
  EXPECT_EQ(net_.sends.size(), 3u);
}

TEST_F(PoolTest, MaxMessagesPerConnectionClosesTheSessionAfterItsLast) {
  shape_.max_messages_per_connection = 2;
  auto& pool = Pool();
  Send(pool);
  Send(pool);
  EXPECT_EQ(pool.idle(), 0u);
  EXPECT_EQ(net_.quits, 1);
  Send(pool);
  EXPECT_EQ(net_.opens.size(), 2u);
}

TEST_F(PoolTest, WithoutACacheEverySessionIsClosedAfterItsTransaction) {
  auto& pool = Pool(0);
  Send(pool);
  Send(pool);
  EXPECT_EQ(net_.opens.size(), 2u);
  EXPECT_EQ(net_.quits, 2);
}

TEST_F(PoolTest, AConnectionSlotIsHeldWhileTheSessionLivesAndGivenBackOnClose) {
  shape_.max_connections = 3;
  auto& pool = Pool(0);
  Send(pool);
  std::lock_guard lock(meta_.mu);
  ASSERT_EQ(meta_.permits.size(), 2u);
  EXPECT_EQ(meta_.permits[0].op(), v1::PermitRequest::ACQUIRE);
  EXPECT_EQ(meta_.permits[0].holds(0).keys(0).key(), "site:mx:mx.example");
  EXPECT_EQ(meta_.permits[0].holds(0).keys(0).limit(), 3u);
  EXPECT_EQ(meta_.permits[1].op(), v1::PermitRequest::RELEASE);
  EXPECT_EQ(meta_.permits[1].holds(0).holder(), meta_.permits[0].holds(0).holder());
  EXPECT_EQ(permits_.holds(), 0u);
}

TEST_F(PoolTest, SingleThreadDeliveryAsksForTheHostsOnlySlot) {
  auto& pool = Pool(10, true);
  Send(pool);
  std::lock_guard lock(meta_.mu);
  ASSERT_EQ(meta_.permits.size(), 1u);
  EXPECT_EQ(meta_.permits[0].holds(0).keys(0).key(), "host:mx.example");
  EXPECT_EQ(meta_.permits[0].holds(0).keys(0).limit(), 1u);
  EXPECT_EQ(permits_.holds(), 1u);  // held while the session is cached
}

TEST_F(PoolTest, NoSlotWithinTheWaitIsAThrottledPutBackNotAFailure) {
  shape_.max_connections = 1;
  meta_.answer = [](const v1::PermitRequest& r) {
    v1::PermitResponse resp;
    resp.set_granted(r.op() != v1::PermitRequest::ACQUIRE);
    resp.set_retry_after_ms(5);
    return resp;
  };
  auto& pool = Pool(10, false, 50ms);
  auto at = Send(pool);
  EXPECT_TRUE(at.throttled);
  EXPECT_FALSE(at.try_next);
  EXPECT_EQ(at.error, "4.4.5 connection limit for mx:mx.example reached; will retry shortly");
  EXPECT_TRUE(net_.opens.empty());
  EXPECT_GT(meta_.PermitCalls(v1::PermitRequest::ACQUIRE), 1u);
}

TEST_F(PoolTest, AMessageRateWhoseTurnDoesNotComeIsThrottled) {
  shape_.message_rate = RateLimit{10, 60};
  meta_.answer = [](const v1::PermitRequest&) { return Refused(60'000); };
  auto& pool = Pool();
  auto at = Send(pool);
  EXPECT_TRUE(at.throttled);
  EXPECT_EQ(at.error, "4.4.5 message rate limit of 10/min for mx:mx.example reached; will retry shortly");
  EXPECT_TRUE(net_.opens.empty());
}

TEST_F(PoolTest, AConnectionThatFailsIsTheHostsFailureAndHoldsNoSlot) {
  shape_.max_connections = 2;
  net_.servers["127.0.0.2"].open_error = "connection refused";
  auto& pool = Pool();
  auto at = Send(pool);
  EXPECT_TRUE(at.try_next);
  EXPECT_EQ(at.error, "connection refused");
  EXPECT_EQ(permits_.holds(), 0u);
  EXPECT_EQ(meta_.PermitCalls(v1::PermitRequest::RELEASE), 1u);
}

}  // namespace
}  // namespace mx::delivery
