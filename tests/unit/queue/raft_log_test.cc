// raft_log_test.cc — the RaftLog itself (libraft + libuv + the TCP transport,
// on loopback): a replica added to a busy three-replica group catches up as a
// standby, snapshot and log, and only then votes; a retried add of a voter is
// done at once; an add to a follower is refused; a removal that would lose
// the quorum is refused with the reason.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

#include <atomic>
#include <filesystem>
#include <future>
#include <memory>
#include <thread>

#include "loopback.h"
#include "raft_log.h"
#include "raft_log_impl.h"

namespace mx::queue {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

class RaftLogTest : public ::testing::Test {
 protected:
  struct Replica {
    fs::path dir;
    std::string address;
    std::unique_ptr<StateMachine> sm;
    std::unique_ptr<RaftLog> log;
  };

  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);  // as mxd: a peer's closed socket is an error, not a signal
    root_ = fs::temp_directory_path() / ("mx-raftlog-" + std::to_string(getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    for (auto& r : replicas_) r.address = "127.0.0.1:" + std::to_string(FreePort());
  }
  void TearDown() override {
    for (auto& r : replicas_) {
      if (r.log) r.log->Stop();
      r.log.reset();
      r.sm.reset();
    }
    fs::remove_all(root_);
  }

  // Starts replica i (node id i+1); bootstrap lists the first `voters` as voters.
  void StartReplica(unsigned i, bool bootstrap, unsigned voters = 3) {
    auto& r = replicas_[i];
    r.dir = root_ / ("n" + std::to_string(i + 1));
    fs::create_directories(r.dir);
    StateMachineOptions so;
    so.dir = (r.dir / "db").string();
    auto sm = StateMachine::Open(so);
    ASSERT_TRUE(sm.ok()) << sm.status().ToString();
    r.sm = std::move(sm).value();
    RaftLogOptions o;
    o.node_id = i + 1;
    o.raft_address = r.address;
    o.grpc_address = "127.0.0.1:1";  // snapshots are fetched by Fetch below
    o.dir = (r.dir / "raft").string();
    o.snapshot_dir = (r.dir / "snapshots").string();
    o.election_timeout_ms = 500;
    o.heartbeat_timeout_ms = 50;
    o.snapshot_threshold = 64;  // the joiner needs a snapshot and the log after it
    o.snapshot_trailing = trailing_;
    if (bootstrap) {
      for (unsigned j = 0; j < voters; ++j) o.bootstrap.push_back(RaftPeer{j + 1, replicas_[j].address});
    }
    auto log = StartRaftLog(o, *r.sm, [this](const v1::SnapshotManifest& m, const std::string& dir) {
      const fs::path src = root_ / ("n" + std::to_string(m.source_node_id())) / "snapshots" / std::to_string(m.index());
      for (const auto& f : m.files()) {
        std::error_code ec;
        fs::copy_file(src / f.name(), fs::path(dir) / f.name(), ec);
        if (ec) return Status(Code::kNotFound, ec.message());
      }
      return Status::Ok();
    });
    ASSERT_TRUE(log.ok()) << log.status().ToString();
    r.log = std::move(log).value();
  }

  RaftLog* Leader() {
    for (auto& r : replicas_) {
      if (r.log && r.log->IsLeader()) return r.log.get();
    }
    return nullptr;
  }

  // Proposes an Enqueue on the leader and waits for it.
  bool Enqueue() {
    RaftLog* leader = Leader();
    if (!leader) return false;
    v1::QueueCommand c;
    c.set_now_unix_us(1'700'000'000'000'000 + ++qids_);
    char qid[15];
    snprintf(qid, sizeof qid, "%014d", qids_);
    auto* m = c.mutable_enqueue()->mutable_message();
    m->mutable_envelope()->set_qid(qid);
    m->mutable_envelope()->set_sender("s@example.test");
    m->set_body("Subject: t\r\n\r\n" + std::string(2000, 'x') + "\r\n");
    m->add_recipients()->set_address("r@x.test");
    auto done = std::make_shared<std::promise<bool>>();
    auto f = done->get_future();
    leader->Propose(std::move(c), [done](const ApplyResult& r) { done->set_value(r.status.ok()); });
    return f.wait_for(10s) == std::future_status::ready && f.get();
  }

  static Status Wait(const std::function<void(RaftLog::ChangeDone)>& start) {
    auto p = std::make_shared<std::promise<Status>>();
    auto f = p->get_future();
    start([p](const Status& st) { p->set_value(st); });
    if (f.wait_for(60s) != std::future_status::ready) return Status(Code::kDeadlineExceeded, "no answer in 60 s");
    return f.get();
  }

  static std::string RoleOf(const v1::ReplicaStatus& s, uint64_t id) {
    for (const auto& m : s.members()) {
      if (m.id() == id) return m.role();
    }
    return "";
  }

  fs::path root_;
  unsigned trailing_ = 16;  // entries the log keeps behind a snapshot
  Replica replicas_[4];
  int qids_ = 0;
};

TEST_F(RaftLogTest, AddedReplicaCatchesUpAsStandbyUnderLoadThenVotes) {
  // The joiner needs the snapshot (the log starts at 384 - 256) and then the
  // log after it. The log keeps 256 entries behind each snapshot: with 16, a
  // joiner slowed by a sanitizer installed one snapshot after another while
  // the leader compacted past each before it was in (TSan: 90 installs, no
  // catch-up in 60 s).
  trailing_ = 256;
  for (unsigned i = 0; i < 3; ++i) StartReplica(i, true);
  ASSERT_TRUE(Eventually([&] { return Leader() != nullptr; }));
  for (int i = 0; i < 400; ++i) ASSERT_TRUE(Enqueue()) << "enqueue " << i;
  StartReplica(3, false);

  std::atomic<bool> loading{true};
  std::atomic<int> accepted{0};
  std::thread load([&] {
    while (loading.load()) {
      if (Enqueue()) ++accepted;
    }
  });
  // The joiner is seen as a standby before it becomes a voter.
  std::atomic<bool> saw_standby{false};
  std::atomic<bool> watching{true};
  std::thread watch([&] {
    while (watching.load()) {
      if (RaftLog* l = Leader()) {
        const v1::ReplicaStatus status = l->GetStatus();
        if (RoleOf(status, 4) == "standby") saw_standby = true;
      }
      std::this_thread::sleep_for(5ms);
    }
  });
  RaftLog* leader = Leader();
  ASSERT_NE(leader, nullptr);
  Status st = Wait([&](RaftLog::ChangeDone d) { leader->AddVoter(4, replicas_[3].address, std::move(d)); });
  loading = false;
  load.join();
  watching = false;
  watch.join();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_TRUE(saw_standby.load());
  EXPECT_GT(accepted.load(), 0);

  // Retried (the first answer lost): already a voter, done at once.
  ASSERT_TRUE(Wait([&](RaftLog::ChangeDone d) { Leader()->AddVoter(4, replicas_[3].address, std::move(d)); }).ok());
  ASSERT_TRUE(Eventually([&] {
    RaftLog* l = Leader();
    if (!l) return false;
    const v1::ReplicaStatus status = l->GetStatus();
    return RoleOf(status, 4) == "voter" && status.members_size() == 4;
  }));
  // The new replica holds every message, the snapshot's and the log's.
  ASSERT_TRUE(Enqueue());
  const int64_t total = 400 + accepted.load() + 1;
  EXPECT_TRUE(Eventually([&] { return replicas_[3].sm->counts().messages == total; }))
      << replicas_[3].sm->counts().messages << " of " << total;
  EXPECT_TRUE(Eventually([&] { return replicas_[3].sm->Digest() == replicas_[0].sm->Digest(); }));
}

TEST_F(RaftLogTest, ChangesOnAFollowerAndQuorumLosingRemovalsAreRefused) {
  for (unsigned i = 0; i < 3; ++i) StartReplica(i, true);
  ASSERT_TRUE(Eventually([&] { return Leader() != nullptr; }));
  ASSERT_TRUE(Enqueue());
  RaftLog* follower = nullptr;
  unsigned stopped = 3;
  for (unsigned i = 0; i < 3; ++i) {
    if (!replicas_[i].log->IsLeader()) {
      if (!follower) {
        follower = replicas_[i].log.get();
      } else {
        stopped = i;
      }
    }
  }
  ASSERT_NE(follower, nullptr);
  Status st = Wait([&](RaftLog::ChangeDone d) { follower->AddVoter(4, "127.0.0.1:9", std::move(d)); });
  EXPECT_EQ(st.code(), Code::kUnavailable) << st.ToString();

  // With one follower gone, removing the other would leave the leader alone
  // out of two voters: refused, saying why.
  replicas_[stopped].log->Stop();
  RaftLog* leader = Leader();
  ASSERT_NE(leader, nullptr);
  ASSERT_TRUE(Eventually([&] {
    const v1::ReplicaStatus status = leader->GetStatus();
    for (const auto& m : status.members()) {
      if (m.id() == stopped + 1 && m.answering()) return false;
    }
    return true;
  }));
  uint64_t other = 0;
  for (unsigned i = 0; i < 3; ++i) {
    if (i != stopped && replicas_[i].log.get() != leader) other = i + 1;
  }
  st = Wait([&](RaftLog::ChangeDone d) { leader->RemoveServer(other, std::move(d)); });
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("less than a quorum"), std::string::npos) << st.ToString();
}

// A leader that sent a follower the log from index 1 and resent it while
// the follower was slow (a standby catching up under ASan in the CI chaos
// run) has its stale copy arrive after the follower compacted its log
// behind a snapshot. libraft 0.15 appends such entries after its last one,
// finds none at index 1 and truncates from there, past the start of its
// log: SEGV. The follower drops the stale message; the group goes on.
TEST_F(RaftLogTest, StaleAppendFromIndexOneOnACompactedLogIsDropped) {
  StartReplica(0, true, 1);
  ASSERT_TRUE(Eventually([&] { return Leader() != nullptr; }));
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(Enqueue()) << "enqueue " << i;  // snapshot at 64, log from 49
  const uint64_t digest = replicas_[0].sm->Digest();
  const uint64_t term = replicas_[0].log->GetStatus().term();

  // A second Raft I/O stands in for a leader of a later term.
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  raft_uv_transport transport{};
  ASSERT_EQ(raft_uv_tcp_init(&transport, &loop), 0);
  raft_io io{};
  const fs::path dir = root_ / "stale-leader";
  fs::create_directories(dir);
  ASSERT_EQ(raft_uv_init(&io, &loop, dir.c_str(), &transport), 0) << io.errmsg;
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(io.init(&io, 9, address.c_str()), 0) << io.errmsg;
  ASSERT_EQ(io.start(
                &io, 1000, [](raft_io*) {}, [](raft_io*, raft_message*) {}),
            0)
      << io.errmsg;

  std::string payload(24, 'x');  // libraft sends whole 8-byte words
  raft_entry entry{};
  entry.term = term + 100;
  entry.type = RAFT_COMMAND;
  entry.buf.base = payload.data();
  entry.buf.len = payload.size();
  raft_message m{};
  m.type = RAFT_IO_APPEND_ENTRIES;
  m.server_id = 1;
  m.server_address = replicas_[0].address.c_str();
  m.append_entries.term = term + 100;
  m.append_entries.prev_log_index = 0;
  m.append_entries.prev_log_term = 0;
  m.append_entries.leader_commit = 0;
  m.append_entries.entries = &entry;
  m.append_entries.n_entries = 1;
  struct Sent {
    int status = -1;
    bool done = false;
  };
  // Sends m until it went out (the first connect may still be in progress).
  auto send = [&](const raft_message& msg) {
    Sent sent;
    raft_io_send req{};
    req.data = &sent;
    for (int attempt = 0; attempt < 50 && sent.status != 0; ++attempt) {
      sent = Sent{};
      if (io.send(&io, &req, &msg, [](raft_io_send* r, int status) {
            auto* s = static_cast<Sent*>(r->data);
            s->status = status;
            s->done = true;
          }) != 0) {
        return false;
      }
      while (!sent.done) uv_run(&loop, UV_RUN_ONCE);
      if (sent.status != 0) std::this_thread::sleep_for(100ms);
    }
    return sent.status == 0;
  };
  ASSERT_TRUE(send(m)) << io.errmsg;
  // Then a heartbeat of that term on the same connection: once the replica
  // has the term, it has read the stale message before it.
  m.append_entries.entries = nullptr;
  m.append_entries.n_entries = 0;
  ASSERT_TRUE(send(m)) << io.errmsg;

  // The replica read both, stepped down for the later term, and being the
  // only voter leads again; its log and state are untouched and it takes
  // new entries.
  EXPECT_TRUE(Eventually([&] { return replicas_[0].log->GetStatus().term() >= term + 100; }));
  EXPECT_TRUE(Eventually([&] { return Leader() != nullptr; }));
  EXPECT_EQ(replicas_[0].sm->Digest(), digest);
  EXPECT_TRUE(Enqueue());
  EXPECT_EQ(replicas_[0].sm->counts().messages, 101);

  bool closed = false;
  io.data = &closed;
  io.close(&io, [](raft_io* i) { *static_cast<bool*>(i->data) = true; });
  while (!closed) uv_run(&loop, UV_RUN_ONCE);
  raft_uv_close(&io);
  raft_uv_tcp_close(&transport);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

// A node hosting several groups' replicas lingers with one entry in flight
// (fewer, fuller entries per group); alone, or tuned by hand, a group uses
// its options as given.
TEST(GroupCommitTest, SharedWhileSeveralGroupsRunUnlessTunedByHand) {
  RaftLogOptions o;
  o.linger = 0us;
  o.max_inflight_entries = 4;
  o.shared_group_commit = true;
  auto alone = EffectiveGroupCommit(o, 1);
  EXPECT_EQ(alone.linger, 0us);
  EXPECT_EQ(alone.max_inflight_entries, 4u);
  auto shared = EffectiveGroupCommit(o, 3);
  EXPECT_EQ(shared.linger, kSharedLinger);
  EXPECT_EQ(shared.max_inflight_entries, 1u);
  o.shared_group_commit = false;  // queue.group_commit_linger or max_inflight_entries set
  o.linger = 500us;
  auto tuned = EffectiveGroupCommit(o, 3);
  EXPECT_EQ(tuned.linger, 500us);
  EXPECT_EQ(tuned.max_inflight_entries, 4u);
}

}  // namespace
}  // namespace mx::queue
