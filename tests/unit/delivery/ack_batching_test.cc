// ack_batching_test.cc — the delivery worker's Ack coalescing against a fake
// queue (a real gRPC server on gRPC's in-process transport): acks finished
// while two are outstanding leave together as one request, every delivery is
// acked exactly once, credits come back in one message per request, and a
// merged request the queue refuses is resent one delivery per request.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "mx/common/clock.h"
#include "mx/common/config.h"
#include "mx/common/grpc_server.h"
#include "mx/common/metrics.h"
#include "mx/delivery/worker.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::delivery {
namespace {

using namespace std::chrono_literals;

constexpr int kMessages = 10;

// Hands out kMessages leases on the first Pull stream and records what comes back.
class FakeQueue final : public v1::Queue::Service {
 public:
  bool hold_first_two = false;  // the first two Acks wait for Release()
  bool refuse_merged = false;   // an Ack with more than one result is INVALID_ARGUMENT

  grpc::Status Pull(grpc::ServerContext*,
                    grpc::ServerReaderWriter<v1::PullResponse, v1::PullRequest>* stream) override {
    v1::PullRequest req;
    if (!stream->Read(&req)) return grpc::Status::OK;
    {
      std::lock_guard lock(mu_);
      if (handed_out_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "one stream only");
      handed_out_ = true;
    }
    v1::PullResponse resp;
    for (int i = 0; i < kMessages; ++i) {
      auto* m = resp.add_messages();
      m->mutable_envelope()->set_qid("Q" + std::to_string(i));
      m->mutable_envelope()->set_sender("s@example.org");
      m->mutable_envelope()->set_size(20);
      m->mutable_envelope()->set_arrival_unix_us(SystemClock::Instance().NowUnixMicros());
      auto* r = m->add_recipients();
      r->set_index(0);
      r->set_address("r@example.net");
      r->set_status(v1::RCPT_LEASED);
      m->set_body("Subject: t\r\n\r\nhi\r\n");
      m->set_lease_expiry_unix_us(SystemClock::Instance().NowUnixMicros() + 600'000'000);
    }
    stream->Write(resp);
    while (stream->Read(&req)) {
      std::lock_guard lock(mu_);
      credits_.push_back(req.credits());
      cv_.notify_all();
    }
    return grpc::Status::OK;
  }

  grpc::Status Ack(grpc::ServerContext*, const v1::AckRequest* req, v1::AckResponse*) override {
    std::unique_lock lock(mu_);
    const int n = ++ack_calls_;
    if (hold_first_two && n <= 2) cv_.wait(lock, [&] { return released_; });
    if (refuse_merged && req->results_size() > 1) {
      refused_.push_back(req->results_size());
      cv_.notify_all();
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "merged ack refused by the test");
    }
    requests_.push_back(req->results_size());
    for (const auto& r : req->results()) ++acked_[r.qid()];
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status ListHostStatus(grpc::ServerContext*, const v1::ListHostStatusRequest*,
                              v1::ListHostStatusResponse*) override {
    return grpc::Status::OK;
  }

  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  // Waits until every message was acked and its credit returned.
  bool WaitAllAcked() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 20s, [&] {
      uint32_t credits = 0;
      for (auto c : credits_) credits += c;
      return acked_.size() == kMessages && credits == kMessages;
    });
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool handed_out_ = false, released_ = false;
  int ack_calls_ = 0;
  std::vector<int> requests_;  // results per accepted Ack
  std::vector<int> refused_;   // results per refused Ack
  std::map<std::string, int> acked_;
  std::vector<uint32_t> credits_;  // credits per PullRequest after the first
};

// Every lookup fails temporarily: each delivery is deferred at once, without
// leaving the process.
class NoDns final : public Resolver {
 public:
  void ResolveMx(const std::string&, std::function<void(MxAnswer)> done) override { done(Fail()); }
  void ResolveHost(const std::string&, std::function<void(MxAnswer)> done) override { done(Fail()); }
  static MxAnswer Fail() {
    MxAnswer a;
    a.kind = MxAnswer::Kind::kTempFail;
    a.error = "test resolver";
    return a;
  }
};

// Recipients delivered, deferred or bounced so far (this process's worker).
double Outcomes() {
  double n = 0;
  for (const auto& family : metrics::Registry().Collect()) {
    if (family.name != "mx_delivery_recipients_total") continue;
    for (const auto& m : family.metric) n += m.counter.value;
  }
  return n;
}

class AckBatchingTest : public ::testing::Test {
 protected:
  void Start(const std::string& target) {
    outcomes_before_ = Outcomes();
    grpc::ServerBuilder builder;
    builder.RegisterService(&queue_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_);
    ServeInProcess({target}, *server_);
    Config config;
    config.node_name = "ack-test";
    config.hostname = "mx.ack.test";
    config.queue.shards = 1;
    config.delivery.queue = {target};
    config.delivery.smart_host = "[relay.invalid]:25";  // NoDns defers it
    config.delivery.concurrency = kMessages;
    auto w = StartDelivery(config, std::make_unique<NoDns>(), SystemClock::Instance());
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    worker_ = std::move(w).value();
  }
  void TearDown() override {
    queue_.Release();
    if (worker_) worker_->Stop();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 2s);
  }

  // Waits until every delivery has its outcome while the first two Acks are
  // held, then lets the queue answer and waits until every message is acked.
  void DeliverAllThenRelease() {
    for (int i = 0; i < 2000 && Outcomes() - outcomes_before_ < kMessages; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(Outcomes() - outcomes_before_, kMessages);
    queue_.Release();
    ASSERT_TRUE(queue_.WaitAllAcked());
  }

  FakeQueue queue_;
  double outcomes_before_ = 0;  // this process's outcome count when Start began
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<DeliveryWorker> worker_;
};

TEST_F(AckBatchingTest, AcksFinishedWhileTwoAreOutstandingLeaveAsOneRequest) {
  queue_.hold_first_two = true;
  Start("fake-queue-held:1");
  ASSERT_NO_FATAL_FAILURE(DeliverAllThenRelease());
  std::lock_guard lock(queue_.mu_);
  for (const auto& [qid, n] : queue_.acked_) EXPECT_EQ(n, 1) << qid;
  // Two single acks went out at once; the other eight waited and left as one
  // (which the queue may answer before the second held one).
  auto sizes = queue_.requests_;
  std::sort(sizes.begin(), sizes.end());
  EXPECT_EQ(sizes, (std::vector<int>{1, 1, kMessages - 2}));
  // Credits: one PullRequest per Ack request, carrying its deliveries' count.
  EXPECT_EQ(queue_.credits_.size(), 3u);
}

TEST_F(AckBatchingTest, AMergedAckTheQueueRefusesIsResentOneDeliveryAtATime) {
  queue_.hold_first_two = true;
  queue_.refuse_merged = true;
  Start("fake-queue-refusing:1");
  ASSERT_NO_FATAL_FAILURE(DeliverAllThenRelease());
  std::lock_guard lock(queue_.mu_);
  ASSERT_EQ(queue_.refused_.size(), 1u);
  EXPECT_EQ(queue_.refused_[0], kMessages - 2);
  EXPECT_EQ(queue_.requests_.size(), static_cast<size_t>(kMessages));
  for (const auto& [qid, n] : queue_.acked_) EXPECT_EQ(n, 1) << qid;
}

}  // namespace
}  // namespace mx::delivery
