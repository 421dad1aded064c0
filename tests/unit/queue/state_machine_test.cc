// state_machine_test.cc — enqueue / lease / ack / defer / tick transitions,
// idempotent replay and durability across reopen.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "metadata_service.h"
#include "mx/common/qid.h"
#include "state_machine.h"

namespace mx::queue {
namespace {

constexpr int64_t kT0 = 1'800'000'000'000'000;
constexpr int64_t kSec = 1'000'000;

class StateMachineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("mx-sm-" + std::to_string(getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    Open();
  }
  void TearDown() override {
    sm_.reset();
    std::filesystem::remove_all(dir_);
    std::filesystem::remove_all(dir_.string() + "-cp");
  }
  void Open(StateMachineOptions::SortOrder order = StateMachineOptions::SortOrder::kPriority) {
    sm_.reset();
    StateMachineOptions o;
    o.dir = dir_.string();
    o.sort_order = order;
    auto r = StateMachine::Open(o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    sm_ = std::move(r).value();
    index_ = sm_->applied_index();
  }

  ApplyResult Apply(const v1::QueueCommand& cmd) {
    std::vector<ApplyResult> res;
    Status st = sm_->Apply(++index_, {&cmd}, &res);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return res.at(0);
  }

  static v1::QueueCommand Enqueue(const std::string& qid, std::vector<std::string> rcpts, int64_t now = kT0,
                                  const std::string& body = "Subject: t\r\n\r\nbody\r\n") {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    auto* m = c.mutable_enqueue()->mutable_message();
    m->mutable_envelope()->set_qid(qid);
    m->mutable_envelope()->set_sender("alice@example.test");
    m->mutable_envelope()->set_size(body.size());
    m->mutable_envelope()->set_mailer_from("esmtp");
    m->set_body(body);
    for (auto& r : rcpts) m->add_recipients()->set_address(r);
    return c;
  }
  static v1::QueueCommand Lease(const std::vector<v1::RcptRef>& items, int64_t now, int64_t expiry) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    c.mutable_lease()->set_worker("w1");
    c.mutable_lease()->set_expiry_unix_us(expiry);
    for (const auto& i : items) *c.mutable_lease()->add_items() = i;
    return c;
  }
  static v1::QueueCommand Ack(const std::string& qid, uint32_t index, v1::Outcome outcome, int64_t now,
                              int64_t next = 0) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    auto* r = c.mutable_ack()->add_results();
    r->set_qid(qid);
    r->set_index(index);
    r->set_outcome(outcome);
    r->set_reply(outcome == v1::OUTCOME_DEFERRED ? "451 4.7.1 try later" : "250 ok");
    r->set_mailer("esmtp");
    r->set_bytes(100);
    r->set_next_attempt_unix_us(next);
    return c;
  }
  static v1::QueueCommand Tick(int64_t now) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    c.mutable_tick()->set_max_items(100);
    return c;
  }
  v1::RcptStatus StatusOf(const std::string& qid, uint32_t i) {
    auto r = sm_->GetRecipient(qid, i);
    return r.ok() ? r->status() : v1::RCPT_STATUS_UNSPECIFIED;
  }

  std::filesystem::path dir_;
  std::unique_ptr<StateMachine> sm_;
  uint64_t index_ = 0;
};

TEST_F(StateMachineTest, EnqueueMakesRecipientsReadyAndComputesPriority) {
  auto r = Apply(Enqueue("00000000010000", {"a@x.test", "b@y.test"}));
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(r.made_ready, 2u);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 2u);
  auto env = sm_->GetEnvelope("00000000010000");
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->pending(), 2u);
  EXPECT_EQ(env->priority(), static_cast<int64_t>(env->size()) + int64_t{2} * 30000);
  EXPECT_EQ(sm_->counts().messages, 1);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_READY], 2);
  EXPECT_EQ(*sm_->GetBody("00000000010000"), "Subject: t\r\n\r\nbody\r\n");
}

TEST_F(StateMachineTest, DuplicateQidIsRefusedWithoutChanges) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  auto r = Apply(Enqueue("00000000010000", {"other@x.test"}));
  EXPECT_EQ(r.status.code(), Code::kAlreadyExists);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);
}

TEST_F(StateMachineTest, ReadyOrderFollowsPriority) {
  Apply(Enqueue("00000000010000", {"a@x.test"}, kT0, std::string(5000, 'x')));  // big: runs later
  Apply(Enqueue("00000000020000", {"a@x.test"}, kT0, "small"));
  auto items = sm_->ReadyItems(10);
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].qid(), "00000000020000");
}

TEST_F(StateMachineTest, LeaseIsExclusive) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  auto items = sm_->ReadyItems(10);
  auto first = Apply(Lease(items, kT0, kT0 + 60 * kSec));
  EXPECT_EQ(first.leased.size(), 1u);
  auto second = Apply(Lease(items, kT0, kT0 + 60 * kSec));
  EXPECT_TRUE(second.leased.empty());
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_LEASED);
  EXPECT_TRUE(sm_->ReadyItems(10).empty());
}

TEST_F(StateMachineTest, DeliveredAckRemovesTheMessage) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  EXPECT_TRUE(sm_->GetEnvelope("00000000010000").ok());  // one recipient still pending
  EXPECT_EQ(sm_->GetEnvelope("00000000010000")->pending(), 1u);
  Apply(Ack("00000000010000", 1, v1::OUTCOME_BOUNCED, kT0 + kSec));
  EXPECT_FALSE(sm_->GetEnvelope("00000000010000").ok());
  EXPECT_FALSE(sm_->GetBody("00000000010000").ok());
  EXPECT_EQ(sm_->counts().messages, 0);
  for (auto n : sm_->counts().by_status) EXPECT_EQ(n, 0);
  v1::GetStatsResponse stats;
  sm_->Stats(&stats);
  ASSERT_EQ(stats.mailers_size(), 1);
  EXPECT_EQ(stats.mailers(0).msgsfr(), 1u);
  EXPECT_EQ(stats.mailers(0).msgsto(), 1u);
  EXPECT_EQ(stats.mailers(0).bytes_to(), 100u);
}

TEST_F(StateMachineTest, DuplicateAckIsIgnored) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  EXPECT_EQ(sm_->GetEnvelope("00000000010000")->pending(), 1u);
}

TEST_F(StateMachineTest, DeferredReturnsToReadyWhenDue) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 120 * kSec));
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_DEFERRED);
  auto rc = sm_->GetRecipient("00000000010000", 0);
  EXPECT_EQ(rc->attempts(), 1u);
  EXPECT_EQ(rc->last_reply(), "451 4.7.1 try later");
  EXPECT_EQ(sm_->EarliestScheduled(), kT0 + 120 * kSec);

  EXPECT_EQ(Apply(Tick(kT0 + 119 * kSec)).made_ready, 0u);  // not yet (MinQueueAge)
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_DEFERRED);
  EXPECT_EQ(Apply(Tick(kT0 + 120 * kSec)).made_ready, 1u);
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_READY);
  // A retried recipient sorts after fresh mail (RetryFactor).
  EXPECT_EQ(sm_->GetRecipient("00000000010000", 0)->ready_priority(),
            sm_->GetEnvelope("00000000010000")->priority() + 90000);
  EXPECT_EQ(sm_->EarliestScheduled(), INT64_MAX);
}

TEST_F(StateMachineTest, ExpiredLeaseReturnsToReady) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  EXPECT_EQ(Apply(Tick(kT0 + 59 * kSec)).made_ready, 0u);
  EXPECT_EQ(Apply(Tick(kT0 + 60 * kSec)).made_ready, 1u);
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_READY);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);
}

TEST_F(StateMachineTest, AckAfterLeaseExpiryStillCounts) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Tick(kT0 + 61 * kSec));  // back to ready
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DELIVERED, kT0 + 62 * kSec));
  EXPECT_FALSE(sm_->GetEnvelope("00000000010000").ok());
  EXPECT_TRUE(sm_->ReadyItems(10).empty());  // the ready entry went with it
}

TEST_F(StateMachineTest, BatchSeesItsOwnWrites) {
  auto enq = Enqueue("00000000010000", {"a@x.test"});
  v1::RcptRef ref;
  ref.set_qid("00000000010000");
  ref.set_index(0);
  auto l1 = Lease({ref}, kT0, kT0 + kSec);
  auto l2 = Lease({ref}, kT0, kT0 + kSec);
  std::vector<ApplyResult> res;
  ASSERT_TRUE(sm_->Apply(++index_, {&enq, &l1, &l2}, &res).ok());
  EXPECT_EQ(res[1].leased.size(), 1u);
  EXPECT_TRUE(res[2].leased.empty());  // the second lease saw the first in the same batch
}

TEST_F(StateMachineTest, ReplayedEntriesAreSkippedAndStateSurvivesReopen) {
  auto enq = Enqueue("00000000010000", {"a@x.test"});
  Apply(enq);
  uint64_t applied = sm_->applied_index();
  Open();  // reopen from disk
  EXPECT_EQ(sm_->applied_index(), applied);
  EXPECT_EQ(sm_->counts().messages, 1);
  // A log replay hands the same entry again: no effect, no duplicate error.
  std::vector<ApplyResult> res;
  ASSERT_TRUE(sm_->Apply(applied, {&enq}, &res).ok());
  EXPECT_TRUE(res[0].status.ok());
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_READY], 1);
}

TEST_F(StateMachineTest, CheckpointReplacesTheStoreAndReloadsIndexes) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@x.test"}));
  v1::QueueCommand member;
  member.mutable_member()->set_node_id(7);
  member.mutable_member()->set_grpc_address("127.0.0.7:7400");
  Apply(member);
  const uint64_t at = sm_->applied_index();
  auto cp_dir = dir_.string() + "-cp";  // beside the store, as Raft snapshots are
  auto files = sm_->CreateCheckpoint(cp_dir);
  ASSERT_TRUE(files.ok()) << files.status().ToString();
  EXPECT_FALSE(files->empty());
  // Later changes exist only in the live store ...
  Apply(Enqueue("00000000020000", {"c@x.test"}));
  Apply(Lease(sm_->ReadyItems(1), kT0, kT0 + 60 * kSec));
  ASSERT_EQ(sm_->counts().messages, 2);
  // ... and are gone once the checkpoint replaces it.
  ASSERT_TRUE(sm_->ReplaceFrom(cp_dir).ok());
  EXPECT_EQ(sm_->applied_index(), at);
  EXPECT_EQ(sm_->counts().messages, 1);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 2u);
  EXPECT_EQ(sm_->EarliestScheduled(), INT64_MAX);  // no lease survived
  EXPECT_EQ(sm_->Members().at(7), "127.0.0.7:7400");
  EXPECT_FALSE(std::filesystem::exists(cp_dir));  // moved, not copied
  Open();                                         // and the replacement is what a restart finds
  EXPECT_EQ(sm_->applied_index(), at);
}

TEST_F(StateMachineTest, LeasesAndReadyIndexAreRebuiltOnReopen) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Enqueue("00000000020000", {"b@x.test"}));
  Apply(Lease({sm_->ReadyItems(1)}, kT0, kT0 + 60 * kSec));
  Open();
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);
  EXPECT_EQ(sm_->EarliestScheduled(), kT0 + 60 * kSec);  // the lease, from the lease CF
  EXPECT_EQ(Apply(Tick(kT0 + 60 * kSec)).made_ready, 1u);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 2u);
}

TEST_F(StateMachineTest, DeferralBelowTheScanFloorIsStillFound) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Tick(kT0 + 100 * kSec));  // the sched floor moves to T0+100s
  Apply(Lease(sm_->ReadyItems(10), kT0 + 100 * kSec, kT0 + 160 * kSec));
  // A new leader whose clock lags stamps an earlier retry time.
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DEFERRED, kT0 + 10 * kSec, kT0 + 20 * kSec));
  EXPECT_EQ(sm_->EarliestScheduled(), kT0 + 20 * kSec);
  EXPECT_EQ(Apply(Tick(kT0 + 20 * kSec)).made_ready, 1u);
}

TEST_F(StateMachineTest, ManyLeasedAndAckedMessagesLeaveNothingBehind) {
  // The FIFO pattern: every message enqueued, leased, delivered.
  for (int i = 0; i < 500; ++i) {
    char qid[15];
    snprintf(qid, sizeof qid, "%014d", i + 1);
    Apply(Enqueue(qid, {"a@x.test"}));
    auto items = sm_->ReadyItems(10);
    ASSERT_EQ(items.size(), 1u);
    ASSERT_EQ(Apply(Lease(items, kT0, kT0 + 60 * kSec)).leased.size(), 1u);
    Apply(Ack(qid, 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  }
  EXPECT_TRUE(sm_->ReadyItems(10).empty());
  EXPECT_EQ(sm_->EarliestScheduled(), INT64_MAX);
  EXPECT_EQ(sm_->counts().messages, 0);
  EXPECT_EQ(Apply(Tick(kT0 + 3600 * kSec)).made_ready, 0u);
}

TEST_F(StateMachineTest, ReleaseReturnsLeasesOfEarlierIncarnations) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@x.test", "c@x.test"}));
  auto items = sm_->ReadyItems(10);
  auto lease = [&](const v1::RcptRef& item, const std::string& owner) {
    auto c = Lease({item}, kT0, kT0 + 300 * kSec);
    c.mutable_lease()->set_worker(owner);
    return Apply(c).leased.size();
  };
  ASSERT_EQ(lease(items[0], "node1/host/100"), 1u);  // the crashed process
  ASSERT_EQ(lease(items[1], "node1/host/200"), 1u);  // its successor
  ASSERT_EQ(lease(items[2], "node2/host/100"), 1u);  // another node
  v1::QueueCommand c;
  c.set_now_unix_us(kT0 + kSec);
  c.mutable_release()->set_owner_prefix("node1/host/");
  c.mutable_release()->set_keep_owner("node1/host/200");
  EXPECT_EQ(Apply(c).made_ready, 1u);
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_READY);
  EXPECT_EQ(StatusOf("00000000010000", 1), v1::RCPT_LEASED);
  EXPECT_EQ(StatusOf("00000000010000", 2), v1::RCPT_LEASED);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);
}

TEST_F(StateMachineTest, ReleaseOfUndeliveredHandout) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@x.test"}));
  auto items = sm_->ReadyItems(10);
  ASSERT_EQ(Apply(Lease(items, kT0, kT0 + 300 * kSec)).leased.size(), 2u);
  v1::QueueCommand c;
  c.set_now_unix_us(kT0 + kSec);
  *c.mutable_release()->add_items() = items[1];
  EXPECT_EQ(Apply(c).made_ready, 1u);
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_LEASED);
  EXPECT_EQ(StatusOf("00000000010000", 1), v1::RCPT_READY);
  EXPECT_EQ(Apply(c).made_ready, 0u);  // idempotent
}

TEST_F(StateMachineTest, AckQueuesDsnAtomically) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  auto ack = Ack("00000000010000", 0, v1::OUTCOME_BOUNCED, kT0 + kSec);
  auto* dsn = ack.mutable_ack()->add_dsns();
  dsn->mutable_envelope()->set_qid("00000000030000");
  dsn->mutable_envelope()->set_is_dsn(true);
  dsn->add_recipients()->set_address("alice@example.test");
  auto r = Apply(ack);
  EXPECT_EQ(r.made_ready, 1u);
  EXPECT_FALSE(sm_->GetEnvelope("00000000010000").ok());
  ASSERT_TRUE(sm_->GetEnvelope("00000000030000").ok());
  EXPECT_TRUE(sm_->GetEnvelope("00000000030000")->is_dsn());
}

TEST_F(StateMachineTest, ListFiltersLikeMailq) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Enqueue("00000000020000", {"b@y.test"}));
  v1::ListRequest f;
  f.set_recipient("y.test");
  v1::ListResponse out;
  sm_->List(f, &out);
  ASSERT_EQ(out.messages_size(), 1);
  EXPECT_EQ(out.messages(0).envelope().qid(), "00000000020000");
  EXPECT_EQ(out.matched(), 1u);
}

TEST_F(StateMachineTest, HostStatusCountsFailuresAndIsPurged) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  auto ack = Ack("00000000010000", 0, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 120 * kSec);
  auto add = [](v1::QueueCommand* c, const std::string& host, bool ok, const std::string& reply) {
    auto* h = c->mutable_ack()->add_hosts();
    h->set_host(host);
    h->set_ok(ok);
    h->set_reply(reply);
  };
  add(&ack, "MX1.x.test", false, "421 4.3.2 busy");
  add(&ack, "mx2.x.test", true, "250 ok");
  Apply(ack);
  v1::QueueCommand again;  // a second failure of mx1, from another delivery
  again.set_now_unix_us(kT0 + 2 * kSec);
  add(&again, "mx1.x.test", false, "Connection refused");
  Apply(again);
  v1::ListHostStatusResponse hs;
  sm_->HostStatuses(&hs);
  ASSERT_EQ(hs.hosts_size(), 2);
  EXPECT_EQ(hs.hosts(0).host(), "mx1.x.test");  // lower-cased key
  EXPECT_EQ(hs.hosts(0).consecutive_failures(), 2u);
  EXPECT_EQ(hs.hosts(0).last_reply(), "Connection refused");
  EXPECT_EQ(hs.hosts(0).last_attempt_unix_us(), kT0 + 2 * kSec);
  EXPECT_EQ(hs.hosts(1).consecutive_failures(), 0u);
  EXPECT_EQ(hs.hosts(1).last_success_unix_us(), kT0 + kSec);

  v1::QueueCommand purge;
  purge.set_now_unix_us(kT0 + 3 * kSec);
  purge.mutable_purge_hosts()->set_host("MX1.X.TEST");
  EXPECT_EQ(Apply(purge).purged, 1u);
  purge.mutable_purge_hosts()->clear_host();  // everything left
  EXPECT_EQ(Apply(purge).purged, 1u);
  hs.Clear();
  sm_->HostStatuses(&hs);
  EXPECT_EQ(hs.hosts_size(), 0);
}

TEST_F(StateMachineTest, DelayWarnedIsRecordedAndQueueOnlyStartsDeferred) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  auto ack = Ack("00000000010000", 0, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 120 * kSec);
  ack.mutable_ack()->mutable_results(0)->set_delay_warned(true);
  Apply(ack);
  EXPECT_TRUE(sm_->GetRecipient("00000000010000", 0)->delay_warned());

  auto q = Enqueue("00000000020000", {"b@x.test"});
  q.mutable_enqueue()->mutable_message()->mutable_envelope()->set_queue_only(true);
  EXPECT_EQ(Apply(q).made_ready, 0u);
  EXPECT_EQ(StatusOf("00000000020000", 0), v1::RCPT_DEFERRED);
  // A queue run for its domain makes it ready at once.
  v1::QueueCommand run;
  run.set_now_unix_us(kT0 + 2 * kSec);
  run.mutable_run()->set_domain("X.test");
  EXPECT_EQ(Apply(run).made_ready, 2u);  // both deferred recipients are in x.test
  EXPECT_EQ(StatusOf("00000000020000", 0), v1::RCPT_READY);
}

// QueueSortOrder: the same four messages leave the ready index in the order
// each mode promises. Arrival: A (big) < B (small) < C (small) < D (small);
// domains: A, C at x.test; B, D at y.test.
TEST_F(StateMachineTest, QueueSortOrders) {
  using O = StateMachineOptions::SortOrder;
  auto fill = [&] {
    Apply(Enqueue("00000000010000", {"a@x.test"}, kT0 + 1, std::string(9000, 'x')));
    Apply(Enqueue("00000000020000", {"b@y.test"}, kT0 + 2, "b"));
    Apply(Enqueue("00000000030000", {"c@x.test"}, kT0 + 3, "cc"));
    Apply(Enqueue("00000000040000", {"d@y.test"}, kT0 + 4, "ddd"));
  };
  auto order = [&] {
    std::string out;
    for (const auto& r : sm_->ReadyItems(10)) out += r.qid().substr(9, 1);
    return out;
  };
  auto reopen = [&](O o) {
    sm_.reset();
    std::filesystem::remove_all(dir_);
    Open(o);
    fill();
  };
  reopen(O::kPriority);
  EXPECT_EQ(order(), "2341");  // smallest first; the 9000-byte message last
  reopen(O::kTime);
  EXPECT_EQ(order(), "1234");  // arrival order
  reopen(O::kHost);
  std::string host = order();  // domains grouped, priority order inside each
  EXPECT_TRUE(host == "3124" || host == "2431") << host;
  reopen(O::kRandom);
  std::string random = order();
  std::string sorted = random;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, "1234");
  reopen(O::kRandom);
  EXPECT_EQ(order(), random);  // deterministic: every replica agrees
}

TEST_F(StateMachineTest, HoldReleaseAndDeleteByFilter) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@y.test"}));
  Apply(Enqueue("00000000020000", {"c@x.test"}));
  Apply(Enqueue("00000000030000", {"d@x.test"}));
  v1::RcptRef in_delivery;
  in_delivery.set_qid("00000000030000");
  in_delivery.set_index(0);
  Apply(Lease({in_delivery}, kT0, kT0 + 60 * kSec));  // 0003 is in delivery
  auto manage = [&](v1::ManageOp::Action action, const std::string& domain, const std::string& qid = "") {
    v1::QueueCommand c;
    c.set_now_unix_us(kT0 + kSec);
    c.mutable_manage()->set_action(action);
    c.mutable_manage()->mutable_filter()->set_domain(domain);
    c.mutable_manage()->mutable_filter()->set_qid_substring(qid);
    return Apply(c);
  };
  auto held = manage(v1::ManageOp::MANAGE_HOLD, "x.test");
  EXPECT_EQ(held.recipients, 2u);  // a@ and c@ (d@ is leased, b@ is elsewhere)
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_HELD);
  EXPECT_EQ(StatusOf("00000000010000", 1), v1::RCPT_READY);
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);  // only b@ can be leased
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_HELD], 2);
  EXPECT_EQ(manage(v1::ManageOp::MANAGE_HOLD, "x.test").recipients, 0u);  // idempotent

  auto released = manage(v1::ManageOp::MANAGE_RELEASE, "x.test", "0001");
  EXPECT_EQ(released.recipients, 1u);
  EXPECT_EQ(StatusOf("00000000010000", 0), v1::RCPT_READY);
  EXPECT_EQ(StatusOf("00000000020000", 0), v1::RCPT_HELD);

  auto deleted = manage(v1::ManageOp::MANAGE_DELETE, "x.test");
  EXPECT_EQ(deleted.messages, 2u);  // 0001 (both recipients) and 0002 (held)
  EXPECT_EQ(deleted.recipients, 3u);
  EXPECT_EQ(deleted.skipped, 1u);  // 0003 is being delivered
  EXPECT_FALSE(sm_->GetEnvelope("00000000010000").ok());
  EXPECT_FALSE(sm_->GetEnvelope("00000000020000").ok());
  EXPECT_TRUE(sm_->GetEnvelope("00000000030000").ok());
  EXPECT_EQ(sm_->counts().messages, 1);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_HELD], 0);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_READY], 0);
  EXPECT_TRUE(sm_->ReadyItems(10).empty());
}

// The counters forget every recipient of a deleted message, the delivered
// ones too (as when a message finishes).
TEST_F(StateMachineTest, DeletingAPartlyDeliveredMessageLeavesNoCountBehind) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  Apply(Ack("00000000010000", 1, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 3600 * kSec));
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_DELIVERED], 1);
  v1::QueueCommand c;
  c.set_now_unix_us(kT0 + 2 * kSec);
  c.mutable_manage()->set_action(v1::ManageOp::MANAGE_DELETE);
  c.mutable_manage()->mutable_filter()->set_domain("x.test");
  auto r = Apply(c);
  EXPECT_EQ(r.messages, 1u);
  EXPECT_EQ(r.recipients, 1u);  // the one still queued
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_DELIVERED], 0);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_DEFERRED], 0);
  EXPECT_EQ(sm_->counts().messages, 0);
}

TEST_F(StateMachineTest, BounceByFilterMarksAndReadiesRecipients) {
  Apply(Enqueue("00000000010000", {"a@x.test", "b@y.test"}));
  Apply(Enqueue("00000000020000", {"c@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Ack("00000000010000", 0, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 3600 * kSec));
  Apply(Ack("00000000010000", 1, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 3600 * kSec));
  // 0002's c@x.test is still leased.
  v1::QueueCommand c;
  c.set_now_unix_us(kT0 + 2 * kSec);
  c.mutable_manage()->set_action(v1::ManageOp::MANAGE_BOUNCE);
  c.mutable_manage()->mutable_filter()->set_domain("x.test");
  auto r = Apply(c);
  EXPECT_EQ(r.recipients, 1u);  // a@x.test
  EXPECT_EQ(r.skipped, 1u);     // c@x.test is in delivery
  EXPECT_EQ(r.made_ready, 1u);
  auto a = sm_->GetRecipient("00000000010000", 0);
  EXPECT_EQ(a->status(), v1::RCPT_READY);
  EXPECT_TRUE(a->operator_bounce());
  EXPECT_FALSE(sm_->GetRecipient("00000000010000", 1)->operator_bounce());
  EXPECT_EQ(StatusOf("00000000010000", 1), v1::RCPT_DEFERRED);  // b@y.test does not match
  EXPECT_EQ(sm_->ReadyItems(10).size(), 1u);
}

TEST_F(StateMachineTest, ThrottledDeferralIsNotAnAttempt) {
  Apply(Enqueue("00000000010000", {"a@x.test"}));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  auto c = Ack("00000000010000", 0, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 3 * kSec);
  c.mutable_ack()->mutable_results(0)->set_throttled(true);
  Apply(c);
  auto rc = sm_->GetRecipient("00000000010000", 0);
  EXPECT_EQ(rc->status(), v1::RCPT_DEFERRED);
  EXPECT_EQ(rc->attempts(), 0u);
  EXPECT_EQ(rc->next_attempt_unix_us(), kT0 + 3 * kSec);
}

TEST_F(StateMachineTest, NodeTableKeepsTheDrainFlagAcrossHeartbeats) {
  auto node = [&](v1::NodeOp::Kind kind, const std::string& name, int64_t now, uint64_t sessions = 0) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    c.mutable_node()->set_kind(kind);
    c.mutable_node()->mutable_info()->set_name(name);
    c.mutable_node()->mutable_info()->set_sessions(sessions);
    return Apply(c);
  };
  EXPECT_EQ(node(v1::NodeOp::NODE_DRAIN, "mx1", kT0).status.code(), Code::kNotFound);  // never heard of
  node(v1::NodeOp::NODE_HEARTBEAT, "mx1", kT0, 3);
  EXPECT_FALSE(sm_->NodeDrain("mx1"));
  EXPECT_TRUE(node(v1::NodeOp::NODE_DRAIN, "mx1", kT0 + kSec).status.ok());
  node(v1::NodeOp::NODE_HEARTBEAT, "mx1", kT0 + 2 * kSec, 1);  // the report does not clear it
  EXPECT_TRUE(sm_->NodeDrain("mx1"));
  v1::ListNodesResponse nodes;
  sm_->Nodes(&nodes);
  ASSERT_EQ(nodes.nodes_size(), 1);
  EXPECT_EQ(nodes.nodes(0).sessions(), 1u);
  EXPECT_EQ(nodes.nodes(0).last_seen_unix_us(), kT0 + 2 * kSec);  // the command's time
  node(v1::NodeOp::NODE_UNDRAIN, "mx1", kT0 + 3 * kSec);
  EXPECT_FALSE(sm_->NodeDrain("mx1"));
  EXPECT_TRUE(node(v1::NodeOp::NODE_FORGET, "mx1", kT0 + 4 * kSec).status.ok());
  v1::ListNodesResponse none;
  sm_->Nodes(&none);
  EXPECT_EQ(none.nodes_size(), 0);
}

// The shard map: an entry is created once, its state only moves forward,
// and the configured shards appear (active, on the bootstrap peers) until a
// change to them is recorded.
TEST_F(StateMachineTest, ShardMapEntriesAreCreatedOnceAndOnlyMoveForward) {
  auto op = [&](uint32_t shard, v1::ShardInfo::State state, bool create, int64_t now) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    auto* info = c.mutable_shard_map()->mutable_info();
    info->set_shard(shard);
    info->set_state(state);
    for (uint64_t id : {1, 2, 3}) info->add_replicas(id);
    c.mutable_shard_map()->set_create(create);
    return Apply(c).status.code();
  };
  EXPECT_EQ(op(3, v1::ShardInfo::SHARD_CREATING, true, kT0), Code::kOk);
  EXPECT_EQ(op(3, v1::ShardInfo::SHARD_CREATING, true, kT0 + kSec), Code::kAlreadyExists);
  EXPECT_EQ(op(3, v1::ShardInfo::SHARD_ACTIVE, false, kT0 + 2 * kSec), Code::kOk);
  EXPECT_EQ(op(3, v1::ShardInfo::SHARD_CREATING, false, kT0 + 3 * kSec), Code::kFailedPrecondition);
  EXPECT_EQ(op(1, v1::ShardInfo::SHARD_DRAINING, false, kT0 + 4 * kSec), Code::kOk);  // a configured shard
  v1::QueueCommand empty;
  empty.mutable_shard_map()->mutable_info()->set_shard(4);
  EXPECT_EQ(Apply(empty).status.code(), Code::kInvalidArgument);  // no state, no replicas
  auto recorded = sm_->ShardMap();
  ASSERT_EQ(recorded.size(), 2u);
  EXPECT_EQ(recorded[0].shard(), 1u);
  EXPECT_EQ(recorded[1].state(), v1::ShardInfo::SHARD_ACTIVE);
  EXPECT_EQ(recorded[1].created_unix_us(), kT0);  // kept across changes
  EXPECT_EQ(recorded[1].changed_unix_us(), kT0 + 2 * kSec);

  ShardDefaults defaults;
  defaults.shards = 3;
  defaults.bootstrap = {1, 2, 3};
  auto full = MetadataService::FullShardMap(recorded, defaults);
  ASSERT_EQ(full.size(), 4u);
  EXPECT_EQ(full[0].state(), v1::ShardInfo::SHARD_ACTIVE);  // configured, never changed
  EXPECT_EQ(full[0].replicas_size(), 3);
  EXPECT_EQ(full[1].state(), v1::ShardInfo::SHARD_DRAINING);
  EXPECT_EQ(full[2].shard(), 2u);
  EXPECT_EQ(full[3].shard(), 3u);
}

// drain-shard --move on the state machines of the source and the target:
// LOCK takes a message out of every index (never one in delivery), operator
// actions and late Acks leave it alone, the target's copy keeps every
// recipient's state, a repeated copy is ALREADY_EXISTS, DONE deletes it.
TEST_F(StateMachineTest, MoveLocksCopiesWithRecipientStateAndDeletes) {
  const std::string a = "00000000010000", b = "00000000020000";
  Apply(Enqueue(a, {"x@one.test", "y@two.test"}));
  Apply(Enqueue(b, {"z@one.test"}));
  Apply(Lease({sm_->ReadyItems(10)}, kT0, kT0 + 60 * kSec));  // all three in delivery
  Apply(Ack(a, 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  Apply(Ack(a, 1, v1::OUTCOME_DEFERRED, kT0 + kSec, kT0 + 100 * kSec));
  auto move = [&](v1::MoveOp::Kind kind, const std::vector<std::string>& qids) {
    v1::QueueCommand c;
    c.set_now_unix_us(kT0 + 2 * kSec);
    c.mutable_move()->set_kind(kind);
    c.mutable_move()->set_target(2);
    for (auto& q : qids) c.mutable_move()->add_qids(q);
    return Apply(c);
  };
  EXPECT_EQ(move(v1::MoveOp::MOVE_LOCK, {a, b}).qids, std::vector<std::string>{a});  // b is in delivery
  std::vector<std::string> movable;
  std::vector<std::pair<std::string, uint32_t>> locked;
  std::string last;
  sm_->MoveCandidates(10, "", &movable, &locked, &last);
  EXPECT_EQ(movable, std::vector<std::string>{b});
  ASSERT_EQ(locked.size(), 1u);
  EXPECT_EQ(locked[0], std::make_pair(a, uint32_t{2}));
  EXPECT_EQ(last, "");
  // Its target retired meanwhile: a retarget LOCK points it elsewhere (only
  // messages already locked), a plain LOCK leaves the target as it is.
  v1::QueueCommand re;
  re.set_now_unix_us(kT0 + 2 * kSec);
  re.mutable_move()->set_kind(v1::MoveOp::MOVE_LOCK);
  re.mutable_move()->set_target(1);
  re.mutable_move()->set_retarget(true);
  re.mutable_move()->add_qids(a);
  re.mutable_move()->add_qids(b);
  EXPECT_EQ(Apply(re).qids, std::vector<std::string>{a});
  EXPECT_EQ(sm_->GetEnvelope(a)->moving_to(), 1u);
  EXPECT_TRUE(move(v1::MoveOp::MOVE_LOCK, {a}).qids.empty());
  EXPECT_EQ(sm_->GetEnvelope(a)->moving_to(), 1u);
  // Its retry is not due here any more, a hold leaves it alone, a late Ack is dropped.
  Apply(Tick(kT0 + 200 * kSec));
  EXPECT_EQ(StatusOf(a, 1), v1::RCPT_DEFERRED);
  v1::QueueCommand hold;
  hold.mutable_manage()->set_action(v1::ManageOp::MANAGE_HOLD);
  EXPECT_EQ(Apply(hold).skipped, 1u);
  EXPECT_EQ(StatusOf(a, 1), v1::RCPT_DEFERRED);
  Apply(Ack(a, 1, v1::OUTCOME_DELIVERED, kT0 + 3 * kSec));
  EXPECT_EQ(StatusOf(a, 1), v1::RCPT_DEFERRED);

  // The copy, as the mover reads it, on the target.
  v1::QueueCommand import;
  import.set_now_unix_us(kT0 + 4 * kSec);
  import.mutable_enqueue()->set_moved(true);
  auto* m = import.mutable_enqueue()->mutable_message();
  *m->mutable_envelope() = *sm_->GetEnvelope(a);
  m->set_body(*sm_->GetBody(a));
  for (auto& r : sm_->GetRecipients(a, 2)) *m->add_recipients() = r;
  StateMachineOptions o;
  o.dir = dir_.string() + "-target";
  std::filesystem::remove_all(o.dir);
  auto target = StateMachine::Open(o);
  ASSERT_TRUE(target.ok());
  std::vector<ApplyResult> res;
  ASSERT_TRUE((*target)->Apply(1, {&import}, &res).ok());
  EXPECT_TRUE(res.at(0).status.ok());
  ASSERT_TRUE((*target)->Apply(2, {&import}, &res).ok());
  EXPECT_EQ(res.at(0).status.code(), Code::kAlreadyExists);  // a repeated copy
  auto copy = (*target)->GetRecipient(a, 1);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(copy->status(), v1::RCPT_DEFERRED);
  EXPECT_EQ(copy->attempts(), 1u);
  EXPECT_EQ(copy->next_attempt_unix_us(), kT0 + 100 * kSec);
  EXPECT_EQ((*target)->GetRecipient(a, 0)->status(), v1::RCPT_DELIVERED);
  EXPECT_FALSE((*target)->GetEnvelope(a)->moving());
  EXPECT_EQ((*target)->GetEnvelope(a)->pending(), 1u);
  EXPECT_EQ((*target)->counts().messages, 1);
  EXPECT_EQ((*target)->counts().by_status[v1::RCPT_DEFERRED], 1);
  v1::GetStatsResponse stats;
  (*target)->Stats(&stats);
  for (const auto& st : stats.mailers()) EXPECT_EQ(st.msgsfr(), 0u);  // received on the source
  auto tick = Tick(kT0 + 200 * kSec);
  ASSERT_TRUE((*target)->Apply(3, {&tick}, &res).ok());
  EXPECT_EQ((*target)->GetRecipient(a, 1)->status(), v1::RCPT_READY);  // its retry is due there
  target->reset();
  std::filesystem::remove_all(o.dir);

  EXPECT_EQ(move(v1::MoveOp::MOVE_DONE, {a}).qids, std::vector<std::string>{a});
  EXPECT_FALSE(sm_->GetEnvelope(a).ok());
  EXPECT_EQ(sm_->counts().messages, 1);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_DEFERRED], 0);
  EXPECT_TRUE(move(v1::MoveOp::MOVE_DONE, {a}).qids.empty());  // repeated after a crash
}

// The leader picks a lease from its ready index, and a LOCK for a move is
// committed before that Lease: the Lease must not take the locked message,
// whose copy is on its way to the target (it was delivered from both shards
// once, in chaos).
TEST_F(StateMachineTest, LeaseCommittedAfterAMoveLockTakesNothing) {
  const std::string a = "00000000030000";
  Apply(Enqueue(a, {"x@one.test", "y@two.test"}));
  const auto chosen = sm_->ReadyItems(10);
  ASSERT_EQ(chosen.size(), 2u);
  v1::QueueCommand lock;
  lock.set_now_unix_us(kT0 + kSec);
  lock.mutable_move()->set_kind(v1::MoveOp::MOVE_LOCK);
  lock.mutable_move()->set_target(1);
  lock.mutable_move()->add_qids(a);
  EXPECT_EQ(Apply(lock).qids, std::vector<std::string>{a});
  EXPECT_TRUE(sm_->ReadyItems(10).empty());
  EXPECT_TRUE(Apply(Lease(chosen, kT0 + kSec, kT0 + 60 * kSec)).leased.empty());
  EXPECT_EQ(StatusOf(a, 0), v1::RCPT_READY);
  EXPECT_EQ(StatusOf(a, 1), v1::RCPT_READY);
  EXPECT_EQ(sm_->counts().by_status[v1::RCPT_LEASED], 0);
}

// The oldest message's arrival (the oldest-age gauge, every tick) is read
// from a hint past the tombstones of messages already gone; the hint follows
// deletions and is lowered by a message added below it (a moved one keeps
// its older qid), and starts over when the store is opened again.
TEST_F(StateMachineTest, OldestArrivalFollowsDeletesAndOlderImports) {
  const std::string a = "00000000100000", b = "00000000200000", c = "00000000300000", old = "00000000050000";
  EXPECT_EQ(sm_->OldestArrival(), 0);  // empty
  Apply(Enqueue(a, {"x@one.test"}));
  Apply(Enqueue(b, {"y@one.test"}));
  Apply(Enqueue(c, {"z@one.test"}));
  EXPECT_EQ(sm_->OldestArrival(), QidGenerator::TimeOf(a));
  Apply(Lease(sm_->ReadyItems(10), kT0, kT0 + 60 * kSec));
  Apply(Ack(a, 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  EXPECT_EQ(sm_->OldestArrival(), QidGenerator::TimeOf(b));
  Apply(Ack(b, 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  EXPECT_EQ(sm_->OldestArrival(), QidGenerator::TimeOf(c));
  v1::QueueCommand import = Enqueue(old, {"w@one.test"});
  import.mutable_enqueue()->set_moved(true);
  Apply(import);
  EXPECT_EQ(sm_->OldestArrival(), QidGenerator::TimeOf(old));
  Apply(Ack(c, 0, v1::OUTCOME_DELIVERED, kT0 + kSec));
  EXPECT_EQ(sm_->OldestArrival(), QidGenerator::TimeOf(old));
  Open();
  EXPECT_EQ(sm_->OldestArrival(), QidGenerator::TimeOf(old));
}

// The suppression list: each change gets the next sequence number, an
// address keeps only its latest change in the log, removals stay as
// tombstones for followers, and it survives a reopen.
TEST_F(StateMachineTest, SuppressionListKeepsOneChangePerAddressInSequence) {
  auto op = [&](const std::vector<std::string>& add, const std::vector<std::string>& remove, int64_t now) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    for (const auto& a : add) {
      auto* e = c.mutable_suppress()->add_add();
      e->set_address(a);
      e->set_reason("550 5.1.1 unknown " + a);
    }
    for (const auto& a : remove) c.mutable_suppress()->add_remove(a);
    return Apply(c);
  };
  auto list = [&](uint64_t after, const std::string& address = "") {
    v1::ListSuppressionsRequest req;
    req.set_after_seq(after);
    req.set_address(address);
    v1::ListSuppressionsResponse resp;
    sm_->Suppressions(req, &resp);
    return resp;
  };
  auto r = op({"a@x.test", "b@x.test", "a@x.test"}, {}, kT0);
  EXPECT_EQ(r.suppressed, 2u);  // a second add of a listed address changes nothing
  r = op({"a@x.test"}, {"b@x.test", "nobody@x.test"}, kT0 + kSec);
  EXPECT_EQ(r.suppressed, 0u);
  EXPECT_EQ(r.unsuppressed, 1u);
  auto all = list(0);
  EXPECT_EQ(all.total(), 1u);
  EXPECT_EQ(all.last_seq(), 3u);
  ASSERT_EQ(all.entries_size(), 2);  // a (seq 1) and b's tombstone (seq 3); b's add is gone
  EXPECT_EQ(all.entries(0).address(), "a@x.test");
  EXPECT_EQ(all.entries(0).seq(), 1u);
  EXPECT_EQ(all.entries(0).added_unix_us(), kT0);
  EXPECT_EQ(all.entries(0).reason(), "550 5.1.1 unknown a@x.test");
  EXPECT_EQ(all.entries(1).address(), "b@x.test");
  EXPECT_TRUE(all.entries(1).removed());
  // A follower that has seen seq 1 reads only the tombstone.
  auto later = list(1);
  ASSERT_EQ(later.entries_size(), 1);
  EXPECT_EQ(later.entries(0).seq(), 3u);
  EXPECT_EQ(list(0, "a@x.test").entries_size(), 1);
  EXPECT_EQ(list(0, "b@x.test").entries_size(), 0);  // removed: not found
  // Back on the list: a new position in the log, the tombstone replaced.
  op({"b@x.test"}, {}, kT0 + 2 * kSec);
  Open();
  all = list(0);
  EXPECT_EQ(all.total(), 2u);
  ASSERT_EQ(all.entries_size(), 2);
  EXPECT_EQ(all.entries(1).address(), "b@x.test");
  EXPECT_EQ(all.entries(1).seq(), 4u);
  EXPECT_FALSE(all.entries(1).removed());
}

TEST_F(StateMachineTest, MailstatsResetClearsEveryCounterAndRestartsSince) {
  auto stats = [&](int64_t now, uint64_t msgsfr, bool reset) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    c.mutable_stats()->set_reset(reset);
    if (msgsfr) {
      auto* d = c.mutable_stats()->add_deltas();
      d->set_mailer("esmtp");
      d->set_msgsfr(msgsfr);
    }
    return c;
  };
  Apply(stats(kT0, 5, false));
  v1::GetStatsResponse before;
  sm_->Stats(&before);
  ASSERT_EQ(before.mailers_size(), 1);
  EXPECT_EQ(before.mailers(0).msgsfr(), 5u);
  EXPECT_EQ(before.since_unix_us(), kT0);
  // One entry: a count, the reset, a count after it (log order decides).
  auto s1 = stats(kT0 + kSec, 2, false), s2 = stats(kT0 + 2 * kSec, 0, true), s3 = stats(kT0 + 3 * kSec, 1, false);
  std::vector<ApplyResult> res;
  ASSERT_TRUE(sm_->Apply(++index_, {&s1, &s2, &s3}, &res).ok());
  v1::GetStatsResponse after;
  sm_->Stats(&after);
  ASSERT_EQ(after.mailers_size(), 1);
  EXPECT_EQ(after.mailers(0).msgsfr(), 1u);
  EXPECT_EQ(after.since_unix_us(), kT0 + 2 * kSec);
}

}  // namespace
}  // namespace mx::queue
