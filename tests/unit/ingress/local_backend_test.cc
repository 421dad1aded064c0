// local_backend_test.cc — the local-first Enqueue of mxd all: the queue node
// of this process takes a message when it leads the shard; otherwise, and
// when leadership moved while the entry was in flight, the message goes
// through the gRPC backend whole; a verdict on the message is not retried.
#include <gtest/gtest.h>

#include <optional>

#include "mx/ingress/enqueue_backend.h"

namespace mx::ingress {
namespace {

// Records what reached the gRPC side and answers OK.
class RecordingRemote final : public EnqueueBackend {
 public:
  void Enqueue(v1::NewMessage message, Done done) override {
    got.push_back(std::move(message));
    done(Status::Ok());
  }
  void RecordStats(const v1::MailerStats&) override { ++stats; }
  void RunQueue(const std::string&, std::function<void(Result<uint64_t>)> done) override { done(7u); }
  // The gRPC backend's pick (by the shard map it follows): here, of 4 shards.
  uint32_t ShardFor(const std::string& qid) const override {
    return static_cast<uint32_t>(std::hash<std::string>()(qid) % 4);
  }

  std::vector<v1::NewMessage> got;
  int stats = 0;
};

v1::NewMessage Message(const std::string& qid) {
  v1::NewMessage m;
  m.mutable_envelope()->set_qid(qid);
  m.set_body(std::string(4096, 'x'));
  return m;
}

struct LocalCall {
  uint32_t shard;
  std::string qid;
};

// A local queue node that answers `verdict` (or declines, when unset).
std::shared_ptr<EnqueueBackend> Make(const std::optional<Status>& verdict, std::vector<LocalCall>* calls,
                                     const std::shared_ptr<RecordingRemote>& remote) {
  return MakeLocalFirstEnqueueBackend(
      [verdict, calls](uint32_t shard, const v1::NewMessage& m, const std::function<void(const Status&)>& done) {
        calls->push_back({shard, m.envelope().qid()});
        if (!verdict) return false;
        done(*verdict);
        return true;
      },
      remote);
}

TEST(LocalFirstEnqueueTest, TheLocalLeaderTakesTheMessageAndGrpcIsNotUsed) {
  auto remote = std::make_shared<RecordingRemote>();
  std::vector<LocalCall> calls;
  auto backend = Make(Status::Ok(), &calls, remote);
  std::optional<Status> result;
  backend->Enqueue(Message("4AbC1"), [&](const Status& st) { result = st; });
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok());
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].qid, "4AbC1");
  // The shard the gRPC backend would pick first for this qid.
  EXPECT_EQ(calls[0].shard, std::hash<std::string>()("4AbC1") % 4);
  EXPECT_TRUE(remote->got.empty());
}

TEST(LocalFirstEnqueueTest, WithoutTheLeadershipTheMessageGoesOverGrpcWhole) {
  auto remote = std::make_shared<RecordingRemote>();
  std::vector<LocalCall> calls;
  auto backend = Make(std::nullopt, &calls, remote);
  std::optional<Status> result;
  backend->Enqueue(Message("4AbC2"), [&](const Status& st) { result = st; });
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok());
  EXPECT_EQ(calls.size(), 1u);
  ASSERT_EQ(remote->got.size(), 1u);
  EXPECT_EQ(remote->got[0].envelope().qid(), "4AbC2");
  EXPECT_EQ(remote->got[0].body().size(), 4096u);
}

TEST(LocalFirstEnqueueTest, LeadershipLostInFlightIsRetriedOverGrpc) {
  auto remote = std::make_shared<RecordingRemote>();
  std::vector<LocalCall> calls;
  auto backend = Make(Status(Code::kUnavailable, "shard 0: leadership lost"), &calls, remote);
  std::optional<Status> result;
  backend->Enqueue(Message("4AbC3"), [&](const Status& st) { result = st; });
  ASSERT_TRUE(result.has_value());
  EXPECT_TRUE(result->ok()) << result->ToString();
  ASSERT_EQ(remote->got.size(), 1u);
  EXPECT_EQ(remote->got[0].envelope().qid(), "4AbC3");
  EXPECT_EQ(remote->got[0].body(), std::string(4096, 'x'));
}

TEST(LocalFirstEnqueueTest, AVerdictOnTheMessageIsFinal) {
  auto remote = std::make_shared<RecordingRemote>();
  std::vector<LocalCall> calls;
  auto backend = Make(Status(Code::kResourceExhausted, "below min_free_disk"), &calls, remote);
  std::optional<Status> result;
  backend->Enqueue(Message("4AbC4"), [&](const Status& st) { result = st; });
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->code(), Code::kResourceExhausted);
  EXPECT_TRUE(remote->got.empty());
}

TEST(LocalFirstEnqueueTest, StatsAndQueueRunsGoOverGrpc) {
  auto remote = std::make_shared<RecordingRemote>();
  std::vector<LocalCall> calls;
  auto backend = Make(Status::Ok(), &calls, remote);
  backend->RecordStats(v1::MailerStats());
  std::optional<uint64_t> made_ready;
  backend->RunQueue("example.test", [&](Result<uint64_t> r) { made_ready = *r; });
  EXPECT_EQ(remote->stats, 1);
  EXPECT_EQ(made_ready, 7u);
  EXPECT_TRUE(calls.empty());
}

}  // namespace
}  // namespace mx::ingress
