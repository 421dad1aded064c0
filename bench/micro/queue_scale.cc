// queue_scale.cc — does a queue shard's cost stay flat as it fills?
//
// Fills one shard's state machine (RocksDB, no Raft: the cost measured is
// the replica's apply) with deferred messages — each enqueued, leased and
// acked as deferred with a retry an hour away, as a real backlog is made —
// and at each size (10k, 100k, 1M by default) measures:
//   enqueue     µs per message, group-committed 64 per entry (p50, p99 of entries)
//   lease       recipients leased and acked delivered per second, for a
//               fresh batch of ready messages on top of the backlog
//   rss         the process's resident memory
// and prints a table plus one JSON object (bench/run stores it). A warm-up of
// 40,000 messages enqueued and delivered comes first and is not counted: it
// fills the memtable budget and the heap, so the growth between sizes is what
// the backlog's depth costs.
//
//   build/release/bench/mx_queue_scale [--sizes 10000,100000,1000000] [--dir D] [--json F]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mx/common/clock.h"
#include "mx/common/qid.h"
#include "state_machine.h"

namespace {

using Steady = std::chrono::steady_clock;
constexpr size_t kBatch = 64;              // commands per Raft entry
constexpr size_t kProbeMessages = 20'000;  // ready messages leased at each size
constexpr int64_t kHour = 3'600'000'000;

double Seconds(Steady::time_point since) {
  return std::chrono::duration<double>(Steady::now() - since).count();
}

long RssKiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

class Shard {
 public:
  explicit Shard(const std::string& dir) : clock_(1'800'000'000'000'000), qids_(clock_, 9) {
    mx::queue::StateMachineOptions o;
    o.dir = dir;
    auto sm = mx::queue::StateMachine::Open(o);
    if (!sm.ok()) {
      fprintf(stderr, "queue_scale: %s\n", sm.status().ToString().c_str());
      exit(1);  // NOLINT(concurrency-mt-unsafe): a one-thread benchmark giving up
    }
    sm_ = std::move(sm).value();
  }

  // Enqueues n messages in entries of kBatch; returns each entry's seconds per message.
  std::vector<double> Enqueue(size_t n, std::vector<std::string>* ids) {
    std::vector<double> per_message;
    for (size_t done = 0; done < n;) {
      const size_t k = std::min(kBatch, n - done);
      std::vector<mx::v1::QueueCommand> cmds(k);
      std::vector<const mx::v1::QueueCommand*> ptrs;
      for (auto& c : cmds) {
        clock_.Advance(std::chrono::microseconds(1));
        std::string qid = qids_.Next();
        c.set_now_unix_us(clock_.NowUnixMicros());
        auto* m = c.mutable_enqueue()->mutable_message();
        m->mutable_envelope()->set_qid(qid);
        m->mutable_envelope()->set_sender("sender@example.com");
        m->mutable_envelope()->set_size(body_.size());
        m->mutable_envelope()->set_mailer_from("esmtp");
        m->set_body(body_);
        m->add_recipients()->set_address("user" + std::to_string(done) + "@example.net");
        ptrs.push_back(&c);
        ids->push_back(std::move(qid));
      }
      auto t = Steady::now();
      Apply(ptrs);
      per_message.push_back(Seconds(t) / static_cast<double>(k));
      done += k;
    }
    return per_message;
  }

  // Leases up to n ready recipients (kBatch per entry) and acks them with
  // outcome; returns how many.
  size_t LeaseAndAck(size_t n, mx::v1::Outcome outcome) {
    size_t total = 0;
    while (total < n) {
      mx::v1::QueueCommand lease;
      lease.set_now_unix_us(clock_.NowUnixMicros());
      lease.mutable_lease()->set_worker("bench");
      lease.mutable_lease()->set_expiry_unix_us(clock_.NowUnixMicros() + 300'000'000);
      for (const auto& ref : sm_->ReadyItems(std::min(kBatch, n - total))) *lease.mutable_lease()->add_items() = ref;
      if (lease.lease().items_size() == 0) break;
      auto leased = Apply({&lease}).at(0).leased;
      mx::v1::QueueCommand ack;
      ack.set_now_unix_us(clock_.NowUnixMicros());
      for (const auto& ref : leased) {
        auto* r = ack.mutable_ack()->add_results();
        r->set_qid(ref.qid());
        r->set_index(ref.index());
        r->set_outcome(outcome);
        r->set_mailer("esmtp");
        if (outcome == mx::v1::OUTCOME_DEFERRED) {
          r->set_reply("451 4.7.1 try again later");
          r->set_next_attempt_unix_us(clock_.NowUnixMicros() + kHour);
        } else {
          r->set_reply("250 2.0.0 ok");
        }
      }
      Apply({&ack});
      total += leased.size();
    }
    return total;
  }

  mx::queue::QueueCounts counts() const { return sm_->counts(); }

 private:
  std::vector<mx::queue::ApplyResult> Apply(const std::vector<const mx::v1::QueueCommand*>& cmds) {
    std::vector<mx::queue::ApplyResult> results;
    if (auto st = sm_->Apply(++index_, cmds, &results); !st.ok()) {
      fprintf(stderr, "queue_scale: apply: %s\n", st.ToString().c_str());
      exit(1);  // NOLINT(concurrency-mt-unsafe): a one-thread benchmark giving up
    }
    return results;
  }

  mx::FakeClock clock_;
  mx::QidGenerator qids_;
  std::unique_ptr<mx::queue::StateMachine> sm_;
  uint64_t index_ = 0;
  const std::string body_ = std::string(1024, 'b');
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes = {10'000, 100'000, 1'000'000};
  std::string dir = (std::filesystem::temp_directory_path() / ("mx-queue-scale-" + std::to_string(getpid()))).string();
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
      sizes.clear();
      std::string s = argv[++i];
      for (size_t p = 0; p < s.size();) {
        size_t c = s.find(',', p);
        sizes.push_back(std::stoul(s.substr(p, c - p)));
        p = c == std::string::npos ? s.size() : c + 1;
      }
    } else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
      dir = argv[++i];
    } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      fprintf(stderr, "usage: mx_queue_scale [--sizes N,N,...] [--dir D] [--json F]\n");
      return 64;
    }
  }
  std::filesystem::remove_all(dir);
  std::string json = "{\"sizes\": [";
  {
    Shard shard(dir);
    printf("%10s %12s %12s %12s %14s %10s\n", "deferred", "enq p50 us", "enq p99 us", "enq msg/s", "lease rcpt/s",
           "rss MiB");
    size_t backlog = 0;
    const long rss0 = RssKiB();
    // Warm-up, left out of every figure: the first tens of thousands of
    // operations run on freshly mapped memory (memtable arena, heap) and
    // measured about 1.5x slower, which made the smallest size look slowest.
    {
      std::vector<std::string> ids;
      shard.Enqueue(2 * kProbeMessages, &ids);
      shard.LeaseAndAck(2 * kProbeMessages, mx::v1::OUTCOME_DELIVERED);
    }
    for (size_t target : sizes) {
      // Grow the deferred backlog to the target.
      std::vector<std::string> ids;
      while (backlog < target) {
        const size_t step = std::min<size_t>(50'000, target - backlog);
        shard.Enqueue(step, &ids);
        backlog += shard.LeaseAndAck(step, mx::v1::OUTCOME_DEFERRED);
      }
      // Enqueue cost on top of it: fresh ready messages...
      auto t = Steady::now();
      auto enq = shard.Enqueue(kProbeMessages, &ids);
      const double enq_rate = static_cast<double>(kProbeMessages) / Seconds(t);
      // ... and the lease/ack throughput that drains them again.
      t = Steady::now();
      const size_t leased = shard.LeaseAndAck(kProbeMessages, mx::v1::OUTCOME_DELIVERED);
      const double lease_rate = static_cast<double>(leased) / Seconds(t);
      const long rss = RssKiB();
      const auto counts = shard.counts();
      printf("%10zu %12.1f %12.1f %12.0f %14.0f %10.1f\n", backlog, Percentile(enq, 0.5) * 1e6,
             Percentile(enq, 0.99) * 1e6, enq_rate, lease_rate, static_cast<double>(rss) / 1024.0);
      fflush(stdout);
      char row[512];
      snprintf(row, sizeof row,
               "%s{\"deferred\": %zu, \"messages\": %lld, \"enqueue_us_p50\": %.2f, \"enqueue_us_p99\": %.2f, "
               "\"enqueue_msgs_per_s\": %.0f, \"lease_rcpts_per_s\": %.0f, \"rss_mib\": %.1f}",
               json.back() == '[' ? "" : ", ", backlog, static_cast<long long>(counts.messages),
               Percentile(enq, 0.5) * 1e6, Percentile(enq, 0.99) * 1e6, enq_rate, lease_rate,
               static_cast<double>(rss) / 1024.0);
      json += row;
    }
    char tail[128];
    snprintf(tail, sizeof tail, "], \"rss_start_mib\": %.1f}", static_cast<double>(rss0) / 1024.0);
    json += tail;
  }
  std::filesystem::remove_all(dir);
  if (!json_path.empty()) std::ofstream(json_path) << json << "\n";
  printf("%s\n", json.c_str());
  return 0;
}
