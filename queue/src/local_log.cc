// local_log.cc — single-node CommandLog with group commit.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "mx/common/log.h"
#include "mx/queue/command_log.h"
#include "mx/queue/probe.h"

namespace mx::queue {
namespace {

class LocalLog final : public CommandLog {
 public:
  LocalLog(StateMachine& sm, const LocalLogOptions& options)
      : sm_(sm), options_(options), next_index_(sm.applied_index() + 1) {
    thread_ = std::thread([this] { Run(); });
  }
  ~LocalLog() override { Stop(); }

  void Propose(v1::QueueCommand cmd, Done done) override {
    {
      std::lock_guard lock(mu_);
      if (!stopping_) {
        size_t bytes = cmd.ByteSizeLong();
        pending_.push_back(Pending{std::move(cmd), std::move(done), bytes});
        cv_.notify_one();
        return;
      }
    }
    ApplyResult r;
    r.status = Status(Code::kUnavailable, "queue is shutting down");
    done(r);
  }

  bool IsLeader() const override { return true; }

  void Stop() override {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
      stopping_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Pending {
    v1::QueueCommand cmd;
    Done done;
    size_t bytes;
  };

  void Run() {
    std::vector<Pending> batch;
    std::vector<const v1::QueueCommand*> cmds;
    std::vector<ApplyResult> results;
    for (;;) {
      batch.clear();
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !pending_.empty(); });
        if (pending_.empty() && stopping_) return;
        if (options_.linger.count() > 0 && pending_.size() < options_.max_commands) {
          cv_.wait_for(lock, options_.linger, [&] { return stopping_ || pending_.size() >= options_.max_commands; });
        }
        size_t bytes = 0;
        while (!pending_.empty() && batch.size() < options_.max_commands &&
               (batch.empty() || bytes + pending_.front().bytes <= options_.max_bytes)) {
          bytes += pending_.front().bytes;
          batch.push_back(std::move(pending_.front()));
          pending_.pop_front();
        }
      }
      cmds.clear();
      for (auto& p : batch) cmds.push_back(&p.cmd);
      auto start = std::chrono::steady_clock::now();
      Status st = sm_.Apply(next_index_, cmds, &results);
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (st.ok()) {
        ++next_index_;  // the batch is one log entry
        Probe::Get().Batched(batch.size());
        Probe::Get().EntryCommitted(secs);
        for (size_t i = 0; i < batch.size(); ++i) batch[i].done(results[i]);
      } else {
        log::Error("queue commit failed: " + st.ToString());
        ApplyResult failed;
        failed.status = Status(Code::kUnavailable, "queue commit failed: " + st.message());
        for (auto& p : batch) p.done(failed);
      }
    }
  }

  StateMachine& sm_;
  LocalLogOptions options_;
  uint64_t next_index_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<CommandLog> MakeLocalLog(StateMachine& sm, const LocalLogOptions& options) {
  return std::make_unique<LocalLog>(sm, options);
}

}  // namespace mx::queue
