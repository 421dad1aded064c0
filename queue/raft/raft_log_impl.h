// raft_log_impl.h — the RaftLog on libraft + libuv (internal to queue/raft/).
//
// One loop thread per replica runs libraft; everything marked "loop thread"
// is touched only there. raft_log.cc: start, proposals (group commit),
// status, close. raft_membership.cc: configuration changes (a new replica
// catches up as a standby before it votes), removals with a quorum check,
// leadership transfers and the preferred-leader balancing.
#pragma once

#include <uv.h>

#include "fsm.h"  // raft.h, in extern "C"
#include "name_transport.h"
extern "C" {
#include <raft/uv.h>
}

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "raft_log.h"

namespace mx::queue::raft {

// An AppendEntries carrying the log from index 1 (prev_log_index 0) to a
// replica whose log starts after index 1, compacted behind a snapshot. Only a
// resend that arrives late does that: a leader that heard from the replica
// knows where its log ends. libraft 0.15 appends such entries after its last
// one, then finds none at index 1 and truncates from there, past the start
// of its log (SEGV or a corrupted log).
bool IsStaleAppendBeforeLog(const raft_message& m, const raft_log& log);

class RaftLogImpl final : public RaftLog {
 public:
  RaftLogImpl(const RaftLogOptions& options, StateMachine& sm, SnapshotFetcher fetch);
  ~RaftLogImpl() override { Stop(); }

  Status Start();

  // CommandLog
  void Propose(v1::QueueCommand cmd, Done done) override;
  bool IsLeader() const override { return leader_.load(); }
  uint64_t LeaderId() const override { return leader_id_.load(); }
  void Stop() override;

  // RaftLog
  v1::ReplicaStatus GetStatus() const override;
  void OnLeadershipChange(std::function<void(bool)> fn) override;
  void AddVoter(uint64_t id, const std::string& raft_address, ChangeDone done) override;
  void RemoveServer(uint64_t id, ChangeDone done) override;
  void TransferLeadership(uint64_t id, ChangeDone done) override;

 private:
  struct Pending {
    v1::QueueCommand cmd;
    Done done;
    size_t bytes;
  };
  // One proposed entry, from raft_apply until its callback.
  struct Inflight {
    struct raft_apply req {};
    RaftLogImpl* self = nullptr;
    uint64_t index = 0;
    std::vector<Done> dones;
    std::vector<ApplyResult> results;
    std::chrono::steady_clock::time_point start;
  };
  // One raft_add / raft_assign / raft_remove in flight.
  struct ChangeOp {
    std::function<void(int status)> then;  // libraft's status
    raft_change req{};
  };
  // A replica added as a standby, replicated to until it is close enough to
  // the leader's log that its promotion to voter costs one short round.
  struct CatchUp {
    uint64_t id = 0;
    std::vector<ChangeDone> dones;  // a retried AddVoter waits here too
    raft_index best_match = 0;
    std::chrono::steady_clock::time_point progressed;  // when best_match last grew
    bool promoting = false;                            // raft_assign(VOTER) in flight
    unsigned promotions = 0;                           // attempts libraft gave up on
  };

  // ---- raft_log.cc ----
  Status Fail(const std::string& what, int rv);
  Status NotLeader() const { return Status(Code::kUnavailable, tag_ + "not the leader"); }
  // False when stopping: fn will not run.
  bool RunOnLoop(std::function<void()> fn);
  static void OnWake(uv_async_t* h);
  static void OnPoll(uv_timer_t* h);
  static void OnLinger(uv_timer_t* h);
  void Flush(bool linger_expired);
  static void OnApplied(struct raft_apply* req, int status, void*);
  void FailDones(std::vector<Done>& dones, const Status& st);
  void FailPending(const Status& st);
  void FailAll(const Status& st);
  void RefreshStatus();
  void BeginClose();
  static void OnRaftClosed(struct ::raft* r);
  // io_.start and the receive callback behind it: drops what
  // IsStaleAppendBeforeLog says, passes the rest to libraft.
  static int OnIoStart(raft_io* io, unsigned msecs, raft_io_tick_cb tick, raft_io_recv_cb recv);
  static void OnReceive(raft_io* io, raft_message* m);
  void CloseHandles();

  // ---- raft_membership.cc ----
  Status ChangeError(const std::string& what, int rv);
  // Runs a configuration change (start(req, cb) is raft_add/assign/remove);
  // then gets libraft's status, synchronous failures included.
  void Change(const std::function<int(raft_change*, raft_change_cb)>& start, std::function<void(int)> then);
  // Leader only: whether follower id (configuration entry i) answered within
  // about two election timeouts.
  bool Answering(uint64_t id, unsigned i);
  // Leader only: refuses a removal that would leave fewer answering voters
  // than a quorum of those left.
  Status CheckQuorumWithout(uint64_t id);
  // Leader only: raft_transfer to voter `to`; `then` runs when libraft is
  // done with it (whoever leads then). One transfer at a time. Returns
  // libraft's error (then never runs).
  int StartTransfer(uint64_t to, std::function<void()> then);
  // Role of server id in the current configuration, -1 if it is not a member.
  int RoleOf(uint64_t id) const;
  // Configuration index of server id, configuration.n if it is not a member.
  unsigned IndexOf(uint64_t id) const;
  void BeginCatchUp(uint64_t id, ChangeDone done);
  // Each poll: promotes the standby once caught up, fails it when it stalls.
  void CheckCatchUp();
  void FinishCatchUp(const Status& st);
  // Leader only: hands leadership to the preferred replica once it is a voter
  // that has every entry (so the handover costs no catch-up).
  void MaybeHandOver();

  RaftLogOptions options_;
  StateMachine& sm_;
  QueueFsm fsm_;
  const std::string tag_;

  uv_loop_t loop_{};
  uv_async_t wake_{};
  uv_timer_t poll_{};
  uv_timer_t linger_{};
  NameTransport transport_;
  raft_io io_{};
  int (*io_start_)(raft_io*, unsigned, raft_io_tick_cb, raft_io_recv_cb) = nullptr;  // libuv io's own start
  raft_io_recv_cb recv_ = nullptr;                                                   // libraft's, set by start
  uint64_t stale_dropped_ = 0;                                                       // loop thread only
  struct ::raft raft_ {};
  bool loop_ready_ = false, transport_ready_ = false, io_ready_ = false, raft_ready_ = false, started_ = false;
  bool counted_ = false;                              // in g_running_logs
  bool closing_ = false;                              // loop thread only
  static constexpr unsigned kBalanceEveryPolls = 60;  // 3 s at 50 ms
  unsigned polls_since_balance_ = 0;                  // loop thread only
  // Leader: when each follower was last seen with libraft's recent_recv set
  // (loop thread only). libraft clears the flag every election timeout, so
  // a follower that answers every heartbeat still reads false for a moment
  // after each clear; this remembers across that moment.
  std::map<uint64_t, std::chrono::steady_clock::time_point> heard_;
  bool transfer_in_flight_ = false;    // loop thread only
  std::unique_ptr<CatchUp> catch_up_;  // loop thread only
  std::thread thread_;

  std::mutex mu_;
  std::deque<Pending> pending_;
  std::vector<std::function<void()>> tasks_;
  std::function<void(bool)> on_leadership_;
  bool stopping_ = false;

  std::unordered_map<uint64_t, Inflight*> inflight_;  // loop thread only
  std::atomic<bool> leader_{false};
  std::atomic<uint64_t> leader_id_{0};
  mutable std::mutex status_mu_;
  v1::ReplicaStatus status_;
};

}  // namespace mx::queue::raft
