// micro_bench.cc — Google Benchmark micro-benchmarks of the hot paths:
// SMTP command parsing, a whole SMTP transaction through ingress::Session
// (the DATA reader with dot-unstuffing), the queue state machine's apply
// (Enqueue, Lease, Ack on RocksDB), the ready index's priority order and
// DKIM signing (RSA-2048 and Ed25519).
//
//   build/release/bench/mx_micro_bench [--benchmark_filter=Session]
#include <benchmark/benchmark.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>

#include "mx/common/clock.h"
#include "mx/common/log.h"
#include "mx/common/malloc_tuning.h"
#include "mx/common/qid.h"
#include "mx/ingress/dkim.h"
#include "mx/ingress/policy.h"
#include "session.h"
#include "smtp_command.h"
#include "state_machine.h"

namespace mx {
namespace {

// ---- SMTP command parser ----------------------------------------------------

void BM_ParseMailAndRcpt(benchmark::State& state) {
  const std::string mail = "MAIL FROM:<alice.sender@example.com> SIZE=4096 BODY=8BITMIME";
  const std::string rcpt = "RCPT TO:<bob.recipient@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net";
  for (auto _ : state) {  // NOLINT(clang-analyzer-deadcode.DeadStores): the benchmark loop idiom
    auto m = ingress::ParseCommand(mail);
    auto mp = ingress::ParsePathArg(m.arg, "FROM", true);
    auto r = ingress::ParseCommand(rcpt);
    auto rp = ingress::ParsePathArg(r.arg, "TO", false);
    benchmark::DoNotOptimize(mp);
    benchmark::DoNotOptimize(rp);
  }
  state.SetItemsProcessed(state.iterations() * 2);
}
BENCHMARK(BM_ParseMailAndRcpt);

// ---- one SMTP transaction through ingress::Session ---------------------------

// The body of a message of about `size` bytes in 78-character lines; every
// tenth line starts with a dot, so it is sent dot-stuffed.
std::vector<std::string> BodyLines(size_t size) {
  std::vector<std::string> lines = {"From: alice@example.com\r\n", "To: bob@example.net\r\n", "Subject: benchmark\r\n",
                                    "Message-ID: <bench@example.com>\r\n", "\r\n"};
  size_t total = 0;
  for (int i = 0; total < size; ++i) {
    std::string line = (i % 10 == 0 ? ".." : "") + std::string(76, static_cast<char>('a' + i % 26)) + "\r\n";
    total += line.size();
    lines.push_back(std::move(line));
  }
  lines.push_back(".\r\n");
  return lines;
}

void BM_SessionTransaction(benchmark::State& state) {
  FakeClock clock(1'800'000'000'000'000);
  QidGenerator qids(clock, 42);
  IngressConfig cfg;
  cfg.hostname = "mx.example.com";
  auto policy = ingress::Policy::Load(cfg, ".");
  if (!policy.ok()) {
    state.SkipWithError(policy.status().message().c_str());
    return;
  }
  const auto body = BodyLines(static_cast<size_t>(state.range(0)));
  ingress::ClientInfo client{"127.0.0.1", "localhost"};
  ingress::Session s(*policy, {}, client, clock, qids);
  s.Start((*policy)->CheckConnect(client));
  s.OnLine("EHLO client.example.com\r\n");
  size_t bytes = 0;
  for (auto _ : state) {  // NOLINT(clang-analyzer-deadcode.DeadStores): the benchmark loop idiom
    clock.Advance(std::chrono::microseconds(10));
    s.output().clear();
    s.OnLine("MAIL FROM:<alice@example.com> SIZE=4096\r\n");
    s.OnLine("RCPT TO:<bob@example.net>\r\n");
    s.OnLine("DATA\r\n");
    ingress::Session::Step step = ingress::Session::Step::kContinue;
    for (const auto& l : body) step = s.OnLine(l);
    if (step != ingress::Session::Step::kEnqueue) {
      state.SkipWithError(("no message: " + s.output()).c_str());
      return;
    }
    auto msg = s.TakeMessage();
    bytes += msg.body().size();
    benchmark::DoNotOptimize(msg);
    s.OnEnqueued(Status::Ok());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_SessionTransaction)->Arg(4096)->Arg(int64_t{100} * 1024);

// ---- DKIM signing -----------------------------------------------------------

// One signature over a 4 KB message: arg 0 rsa-sha256 (2048-bit), 1 ed25519-sha256.
void BM_DkimSign(benchmark::State& state) {
  const bool rsa = state.range(0) == 0;
  EVP_PKEY* key = rsa ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(2048))
                      : EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  const auto path = std::filesystem::temp_directory_path() / ("mx-micro-dkim-" + std::to_string(getpid()) + ".pem");
  FILE* f = fopen(path.c_str(), "w");
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  fclose(f);
  EVP_PKEY_free(key);
  DkimConfig config;
  config.keys = {{"example.com", "s1", path.string()}};
  auto signer = ingress::DkimSigner::Load(config);
  std::filesystem::remove(path);
  if (!signer.ok()) {
    state.SkipWithError(signer.status().message().c_str());
    return;
  }
  std::string message =
      "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: a benchmark\r\n"
      "Date: Mon, 23 Nov 2026 20:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n";
  while (message.size() < 4096) message += "The quick brown fox jumps over the lazy dog, again and again.\r\n";
  for (auto _ : state) {  // NOLINT(clang-analyzer-deadcode.DeadStores): the benchmark loop idiom
    auto r = (*signer)->Sign("", message, 1'800'000'000);
    benchmark::DoNotOptimize(r);
  }
  state.SetLabel(rsa ? "rsa-sha256" : "ed25519-sha256");
}
BENCHMARK(BM_DkimSign)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// ---- queue state machine apply ----------------------------------------------

class QueueDir {
 public:
  QueueDir() : path_(std::filesystem::temp_directory_path() / ("mx-micro-" + std::to_string(getpid()))) {
    std::filesystem::remove_all(path_);
  }
  ~QueueDir() { std::filesystem::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

v1::QueueCommand EnqueueCommand(const std::string& qid, const std::string& body, int64_t now) {
  v1::QueueCommand c;
  c.set_now_unix_us(now);
  auto* m = c.mutable_enqueue()->mutable_message();
  m->mutable_envelope()->set_qid(qid);
  m->mutable_envelope()->set_sender("alice@example.com");
  m->mutable_envelope()->set_size(body.size());
  m->mutable_envelope()->set_mailer_from("esmtp");
  m->set_body(body);
  m->add_recipients()->set_address("bob@example.net");
  return c;
}

// Per message: Enqueue (group-committed `batch` per entry), Lease, Ack delivered.
void BM_StateMachineEnqueueLeaseAck(benchmark::State& state) {
  QueueDir dir;
  queue::StateMachineOptions o;
  o.dir = dir.str();
  auto sm = queue::StateMachine::Open(o);
  if (!sm.ok()) {
    state.SkipWithError(sm.status().message().c_str());
    return;
  }
  FakeClock clock(1'800'000'000'000'000);
  QidGenerator qids(clock, 7);
  const std::string body(4096, 'x');
  const size_t batch = static_cast<size_t>(state.range(0));
  uint64_t index = 0;
  std::vector<queue::ApplyResult> results;
  for (auto _ : state) {  // NOLINT(clang-analyzer-deadcode.DeadStores): the benchmark loop idiom
    std::vector<v1::QueueCommand> cmds;
    std::vector<std::string> ids;
    for (size_t i = 0; i < batch; ++i) {
      clock.Advance(std::chrono::microseconds(1));
      ids.push_back(qids.Next());
      cmds.push_back(EnqueueCommand(ids.back(), body, clock.NowUnixMicros()));
    }
    std::vector<const v1::QueueCommand*> ptrs;
    ptrs.reserve(cmds.size());
    for (const auto& c : cmds) ptrs.push_back(&c);
    if (!(*sm)->Apply(++index, ptrs, &results).ok()) state.SkipWithError("enqueue");
    v1::QueueCommand lease;
    lease.set_now_unix_us(clock.NowUnixMicros());
    lease.mutable_lease()->set_worker("w");
    lease.mutable_lease()->set_expiry_unix_us(clock.NowUnixMicros() + 60'000'000);
    for (const auto& ref : (*sm)->ReadyItems(batch)) *lease.mutable_lease()->add_items() = ref;
    if (!(*sm)->Apply(++index, {&lease}, &results).ok()) state.SkipWithError("lease");
    v1::QueueCommand ack;
    ack.set_now_unix_us(clock.NowUnixMicros());
    for (const auto& ref : results.at(0).leased) {
      auto* r = ack.mutable_ack()->add_results();
      r->set_qid(ref.qid());
      r->set_index(ref.index());
      r->set_outcome(v1::OUTCOME_DELIVERED);
      r->set_reply("250 2.0.0 ok");
      r->set_mailer("esmtp");
    }
    if (!(*sm)->Apply(++index, {&ack}, &results).ok()) state.SkipWithError("ack");
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
}
BENCHMARK(BM_StateMachineEnqueueLeaseAck)->Arg(1)->Arg(64)->Unit(benchmark::kMicrosecond);

// ---- the ready index: priority order -------------------------------------------

// Insert a recipient with a random priority and take the first one, at a
// given index size (the in-memory mirror of the `ready` column family).
void BM_ReadyIndexInsertPopFront(benchmark::State& state) {
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int64_t> prio(0, 10'000'000);
  std::set<queue::IndexKey> index;
  FakeClock clock(1'800'000'000'000'000);
  QidGenerator qids(clock, 3);
  auto key = [&] {
    clock.Advance(std::chrono::microseconds(1));
    return queue::IndexKey{prio(rng), qids.Next(), 0};
  };
  for (int64_t i = 0; i < state.range(0); ++i) index.insert(key());
  for (auto _ : state) {  // NOLINT(clang-analyzer-deadcode.DeadStores): the benchmark loop idiom
    index.insert(key());
    index.erase(index.begin());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ReadyIndexInsertPopFront)->Arg(1000)->Arg(100'000)->Arg(1'000'000);

}  // namespace
}  // namespace mx

int main(int argc, char** argv) {
  // The maillog line of each accepted message is not what is measured here.
  mx::log::SetLevel(mx::log::Level::kWarning);
  mx::TuneMalloc();  // as mxd does (MX_MICRO_DEFAULT_MALLOC=1 measures glibc's defaults)
  // Before any thread starts: getenv and mallopt are safe here.
  if (getenv("MX_MICRO_DEFAULT_MALLOC") != nullptr) {  // NOLINT(concurrency-mt-unsafe)
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);             // NOLINT(concurrency-mt-unsafe)
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);             // NOLINT(concurrency-mt-unsafe)
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
