// raft_fixture_test.cc — three replicas of the queue state machine driven by
// libraft's deterministic in-memory fixture: random commands with partitions,
// leader changes and dead replicas must leave identical state everywhere, and a
// replica cut off past the compacted log catches up by snapshot install.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <random>

extern "C" {
#include <raft/fixture.h>
}
#include "fsm.h"

namespace mx::queue {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kT0 = 1'700'000'000'000'000;
constexpr int64_t kSec = 1'000'000;
constexpr unsigned kN = 3;

class RaftFixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("mx-raftfx-" + std::to_string(getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    ASSERT_EQ(raft_fixture_initialize(&f_), 0);
    for (unsigned i = 0; i < kN; ++i) {
      auto& r = replicas_[i];
      r.dir = root_ / ("r" + std::to_string(i));
      fs::create_directories(r.dir);
      StateMachineOptions o;
      o.dir = (r.dir / "db").string();
      auto sm = StateMachine::Open(o);
      ASSERT_TRUE(sm.ok()) << sm.status().ToString();
      r.sm = std::move(sm).value();
      raft::QueueFsm::Options fo;
      fo.node_id = i + 1;
      fo.snapshot_dir = (r.dir / "snapshots").string();
      r.fsm = std::make_unique<raft::QueueFsm>(
          *r.sm, fo, [this](const v1::SnapshotManifest& m, const std::string& dir) { return Fetch(m, dir); });
      r.fsm->UseAsyncSnapshots(false);  // the fixture's io reports version 1 (no async_work)
      ASSERT_EQ(raft_fixture_grow(&f_, r.fsm->fsm()), 0);
    }
    for (unsigned i = 0; i < kN; ++i) replicas_[i].fsm->Attach(raft_fixture_get(&f_, i));
    raft_configuration conf;
    ASSERT_EQ(raft_fixture_configuration(&f_, kN, &conf), 0);
    ASSERT_EQ(raft_fixture_bootstrap(&f_, &conf), 0);
    raft_configuration_close(&conf);
  }
  void Start(unsigned snapshot_threshold = 1000, unsigned trailing = 100) {
    for (unsigned i = 0; i < kN; ++i) {
      raft_set_snapshot_threshold(raft_fixture_get(&f_, i), snapshot_threshold);
      raft_set_snapshot_trailing(raft_fixture_get(&f_, i), trailing);
    }
    ASSERT_EQ(raft_fixture_start(&f_), 0);
    ASSERT_TRUE(raft_fixture_step_until_has_leader(&f_, 10000));
  }
  void TearDown() override {
    raft_fixture_close(&f_);
    for (auto& r : replicas_) {
      r.fsm.reset();
      r.sm.reset();
    }
    fs::remove_all(root_);
  }

  // The fake of the gRPC FetchSnapshot: copies the source replica's checkpoint.
  Status Fetch(const v1::SnapshotManifest& m, const std::string& dir) {
    if (m.source_node_id() < 1 || m.source_node_id() > kN) return Status(Code::kNotFound, "no such source");
    const fs::path src = replicas_[m.source_node_id() - 1].dir / "snapshots" / std::to_string(m.index());
    for (const auto& f : m.files()) {
      std::error_code ec;
      fs::copy_file(src / f.name(), fs::path(dir) / f.name(), ec);
      if (ec) return Status(Code::kNotFound, ec.message());
    }
    ++fetches_;
    return Status::Ok();
  }

  // Proposes one entry on the current leader; false if there is none.
  bool Propose(std::vector<v1::QueueCommand> cmds) {
    unsigned leader = raft_fixture_leader_index(&f_);
    if (leader >= kN) return false;
    v1::QueueEntry entry;
    for (auto& c : cmds) *entry.add_commands() = std::move(c);
    raft_buffer buf = raft::QueueFsm::Encode(entry);
    using Apply = struct raft_apply;
    auto* req = new Apply{};
    int rv = raft_apply(raft_fixture_get(&f_, leader), req, &buf, 1, [](Apply* r, int, void*) { delete r; });
    if (rv != 0) {
      raft_free(buf.base);
      delete req;
      return false;
    }
    return true;
  }

  StateMachine& LeaderSm() { return *replicas_[raft_fixture_leader_index(&f_)].sm; }

  v1::QueueCommand Enqueue(int64_t now, uint32_t nrcpts) {
    v1::QueueCommand c;
    c.set_now_unix_us(now);
    char qid[15];
    snprintf(qid, sizeof qid, "%014d", ++qids_);
    auto* m = c.mutable_enqueue()->mutable_message();
    std::string body = "Subject: t\r\n\r\n" + std::string(static_cast<size_t>(qids_ % 7) * 100, 'x') + "\r\n";
    m->mutable_envelope()->set_qid(qid);
    m->mutable_envelope()->set_sender("s@example.test");
    m->mutable_envelope()->set_size(body.size());
    m->set_body(body);
    for (uint32_t i = 0; i < nrcpts; ++i) m->add_recipients()->set_address("r" + std::to_string(i) + "@x.test");
    return c;
  }

  // Drives the cluster to agreement and checks every replica's state.
  void ExpectConverged() {
    for (unsigned i = 0; i < kN; ++i) {
      if (!raft_fixture_alive(&f_, i)) raft_fixture_revive(&f_, i);
      for (unsigned j = 0; j < kN; ++j) {
        if (i != j) raft_fixture_reconnect(&f_, i, j);
      }
    }
    ASSERT_TRUE(raft_fixture_step_until_has_leader(&f_, 20000));
    v1::QueueCommand tick;
    tick.set_now_unix_us(kT0);
    tick.mutable_tick();
    ASSERT_TRUE(Propose({tick}));
    raft_index last = raft_last_index(raft_fixture_get(&f_, raft_fixture_leader_index(&f_)));
    ASSERT_TRUE(raft_fixture_step_until_applied(&f_, kN, last, 20000));
    const uint64_t digest = replicas_[0].sm->Digest();
    for (unsigned i = 0; i < kN; ++i) {
      EXPECT_EQ(replicas_[i].sm->applied_index(), last) << "replica " << i;
      EXPECT_EQ(replicas_[i].sm->Digest(), digest) << "replica " << i << " diverged";
    }
  }

  struct Replica {
    fs::path dir;
    std::unique_ptr<StateMachine> sm;
    std::unique_ptr<raft::QueueFsm> fsm;
  };
  fs::path root_;
  raft_fixture f_{};
  Replica replicas_[kN];
  int qids_ = 0;
  int fetches_ = 0;
};

TEST_F(RaftFixtureTest, CommittedCommandsApplyIdenticallyOnEveryReplica) {
  Start();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Propose({Enqueue(kT0 + i, 2)}));
  raft_index last = raft_last_index(raft_fixture_get(&f_, raft_fixture_leader_index(&f_)));
  ASSERT_TRUE(raft_fixture_step_until_applied(&f_, kN, last, 10000));
  for (auto& r : replicas_) {
    EXPECT_EQ(r.sm->counts().messages, 20);
    EXPECT_EQ(r.sm->ReadyItems(100).size(), 40u);
  }
  ExpectConverged();
}

class RaftFixtureRandomTest : public RaftFixtureTest, public ::testing::WithParamInterface<int> {};

TEST_P(RaftFixtureRandomTest, RandomCommandsPartitionsAndLeaderChangesConverge) {
  Start(/*snapshot_threshold=*/64, /*trailing=*/16);
  std::mt19937 rng(static_cast<uint32_t>(GetParam()));
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
  int64_t now = kT0;
  int disruptions = 0;
  for (int step = 0; step < 400; ++step) {
    now += kSec;
    int action = pick(100);
    if (action < 35) {
      Propose({Enqueue(now, 1 + static_cast<uint32_t>(pick(3)))});
    } else if (action < 55) {
      // Lease what the leader sees as ready (it may be stale: apply decides).
      if (raft_fixture_leader_index(&f_) < kN) {
        v1::QueueCommand c;
        c.set_now_unix_us(now);
        c.mutable_lease()->set_worker("w/" + std::to_string(pick(2)));
        c.mutable_lease()->set_expiry_unix_us(now + 30 * kSec);
        for (auto& item : LeaderSm().ReadyItems(5)) *c.mutable_lease()->add_items() = item;
        Propose({c});
      }
    } else if (action < 75) {
      if (raft_fixture_leader_index(&f_) < kN) {
        v1::QueueCommand c;
        c.set_now_unix_us(now);
        for (int q = 1; q <= qids_; q += 1 + pick(4)) {
          char qid[15];
          snprintf(qid, sizeof qid, "%014d", q);
          auto r = LeaderSm().GetRecipient(qid, 0);
          if (!r.ok() || r->status() != v1::RCPT_LEASED) continue;
          auto* res = c.mutable_ack()->add_results();
          res->set_qid(qid);
          res->set_index(0);
          res->set_outcome(static_cast<v1::Outcome>(1 + pick(3)));
          res->set_reply("250 ok");
          res->set_next_attempt_unix_us(now + 5 * kSec);
          res->set_mailer("esmtp");
        }
        if (c.ack().results_size() > 0) Propose({c});
      }
    } else if (action < 85) {
      v1::QueueCommand c;
      c.set_now_unix_us(now);
      c.mutable_tick()->set_max_items(100);
      v1::QueueCommand rel;
      rel.set_now_unix_us(now);
      rel.mutable_release()->set_owner_prefix("w/");
      rel.mutable_release()->set_keep_owner("w/" + std::to_string(pick(2)));
      Propose({c, rel});  // two commands in one entry
    } else if (action < 90) {
      unsigned i = static_cast<unsigned>(pick(kN)), j = static_cast<unsigned>(pick(kN));
      if (i != j) {
        raft_fixture_disconnect(&f_, i, j);
        raft_fixture_disconnect(&f_, j, i);
        ++disruptions;
      }
    } else if (action < 94) {
      for (unsigned i = 0; i < kN; ++i) {
        for (unsigned j = 0; j < kN; ++j) {
          if (i != j) raft_fixture_reconnect(&f_, i, j);
        }
      }
    } else if (action < 96) {
      // Isolate the leader: it steps down and the others elect a new one.
      unsigned leader = raft_fixture_leader_index(&f_);
      if (leader < kN) {
        for (unsigned j = 0; j < kN; ++j) {
          if (j == leader) continue;
          raft_fixture_disconnect(&f_, leader, j);
          raft_fixture_disconnect(&f_, j, leader);
        }
        ++disruptions;
      }
    } else if (action < 98) {
      unsigned i = static_cast<unsigned>(pick(kN));
      if (raft_fixture_alive(&f_, i)) {
        raft_fixture_kill(&f_, i);
        ++disruptions;
      }
    } else {
      for (unsigned i = 0; i < kN; ++i) {
        if (!raft_fixture_alive(&f_, i)) raft_fixture_revive(&f_, i);
      }
    }
    raft_fixture_step_n(&f_, 1 + static_cast<unsigned>(pick(30)));
    if (raft_fixture_leader_index(&f_) >= kN) raft_fixture_step_until_has_leader(&f_, 3000);
  }
  EXPECT_GT(disruptions, 5);
  ExpectConverged();
  EXPECT_GT(replicas_[0].sm->counts().messages + replicas_[0].sm->counts().by_status[v1::RCPT_DELIVERED], 0);
}

INSTANTIATE_TEST_SUITE_P(Seeds, RaftFixtureRandomTest, ::testing::Values(1, 2, 3, 4));

TEST_F(RaftFixtureTest, ReplicaBehindTheCompactedLogCatchesUpBySnapshot) {
  Start(/*snapshot_threshold=*/16, /*trailing=*/4);
  unsigned leader = raft_fixture_leader_index(&f_);
  unsigned behind = (leader + 1) % kN;
  for (unsigned i = 0; i < kN; ++i) {
    if (i != behind) {
      raft_fixture_disconnect(&f_, i, behind);
      raft_fixture_disconnect(&f_, behind, i);
    }
  }
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE(Propose({Enqueue(kT0 + i, 1)}));
    raft_fixture_step_n(&f_, 5);
  }
  raft_index last = raft_last_index(raft_fixture_get(&f_, raft_fixture_leader_index(&f_)));
  ASSERT_TRUE(raft_fixture_step_until_applied(&f_, raft_fixture_leader_index(&f_), last, 10000));
  EXPECT_GT(replicas_[raft_fixture_leader_index(&f_)].fsm->last_snapshot_index(), 16u);
  EXPECT_LT(replicas_[behind].sm->applied_index(), 10u);
  ExpectConverged();
  EXPECT_EQ(replicas_[behind].fsm->installs(), 1u);
  EXPECT_GE(fetches_, 1);
  EXPECT_EQ(replicas_[behind].sm->counts().messages, 60);
}

}  // namespace
}  // namespace mx::queue
