// admin_service.cc — Admin RPCs answered from the queue shards.
#include "mx/control/admin_service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <map>

#include "mx/common/grpc_server.h"
#include "mx/v1/control.grpc.pb.h"
#include "mx/v1/queue.grpc.pb.h"

namespace mx::control {
namespace {

constexpr auto kShardDeadline = std::chrono::seconds(10);

class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(const std::vector<std::string>& queues) {
    for (const auto& q : queues) shards_.push_back({q, v1::Queue::NewStub(MakeChannel(q))});
  }

  grpc::Status Mailq(grpc::ServerContext*, const v1::MailqRequest* req, v1::MailqResponse* resp) override {
    v1::ListRequest list;
    list.set_qid(req->qid());
    list.set_sender(req->sender());
    list.set_recipient(req->recipient());
    list.set_limit(req->limit());
    for (auto& s : shards_) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + kShardDeadline);
      v1::ListResponse part;
      auto st = s.stub->List(&ctx, list, &part);
      if (!st.ok()) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "queue shard " + s.target + ": " + st.error_message());
      }
      for (auto& m : *part.mutable_messages()) *resp->add_messages() = std::move(m);
      resp->set_matched(resp->matched() + part.matched());
    }
    // Oldest first across shards (qids are time-ordered).
    std::sort(
        resp->mutable_messages()->begin(), resp->mutable_messages()->end(),
        [](const v1::QueuedMessage& a, const v1::QueuedMessage& b) { return a.envelope().qid() < b.envelope().qid(); });
    return grpc::Status::OK;
  }

  grpc::Status Mailstats(grpc::ServerContext*, const v1::MailstatsRequest*, v1::MailstatsResponse* resp) override {
    std::map<std::string, v1::MailerStats> sum;
    int64_t since = 0;
    for (auto& s : shards_) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + kShardDeadline);
      v1::GetStatsResponse part;
      auto st = s.stub->GetStats(&ctx, v1::GetStatsRequest(), &part);
      if (!st.ok()) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "queue shard " + s.target + ": " + st.error_message());
      }
      if (part.since_unix_us() && (since == 0 || part.since_unix_us() < since)) since = part.since_unix_us();
      for (const auto& m : part.mailers()) {
        auto& t = sum[m.mailer()];
        t.set_mailer(m.mailer());
        t.set_msgsfr(t.msgsfr() + m.msgsfr());
        t.set_bytes_from(t.bytes_from() + m.bytes_from());
        t.set_msgsto(t.msgsto() + m.msgsto());
        t.set_bytes_to(t.bytes_to() + m.bytes_to());
        t.set_msgsrej(t.msgsrej() + m.msgsrej());
        t.set_msgsdis(t.msgsdis() + m.msgsdis());
      }
    }
    for (auto& [_, m] : sum) *resp->add_mailers() = m;
    resp->set_since_unix_us(since);
    return grpc::Status::OK;
  }

 private:
  struct Shard {
    std::string target;
    std::unique_ptr<v1::Queue::Stub> stub;
  };
  std::vector<Shard> shards_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeAdminService(const std::vector<std::string>& queues) {
  return std::make_unique<AdminService>(queues);
}

}  // namespace mx::control
