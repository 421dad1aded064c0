// local_backend.cc — Enqueue straight into the queue node of this process
// (mxd all), over gRPC only when that node does not lead the shard.
#include <memory>

#include "mx/ingress/enqueue_backend.h"

namespace mx::ingress {
namespace {

class LocalFirstEnqueueBackend final : public EnqueueBackend {
 public:
  LocalFirstEnqueueBackend(LocalEnqueue local, std::shared_ptr<EnqueueBackend> remote)
      : local_(std::move(local)), remote_(std::move(remote)) {}

  void Enqueue(v1::NewMessage message, Done done) override {
    // The shard the gRPC backend picks first for this qid.
    const uint32_t shard = remote_->ShardFor(message.envelope().qid());
    struct Op {
      v1::NewMessage message;
      Done done;
    };
    auto op = std::make_shared<Op>(Op{std::move(message), std::move(done)});
    std::shared_ptr<EnqueueBackend> remote = remote_;
    const bool taken = local_(shard, op->message, [op, remote](const Status& st) {
      // Leadership moved while the entry was in flight (a multi-node mxd all):
      // the gRPC backend finds the new leader, and ALREADY_EXISTS there means
      // this attempt committed after all. Verdicts on the message stand.
      if (st.code() == Code::kUnavailable) return remote->Enqueue(std::move(op->message), std::move(op->done));
      op->done(st);
    });
    if (!taken) remote_->Enqueue(std::move(op->message), std::move(op->done));
  }

  void RecordStats(const v1::MailerStats& delta) override { remote_->RecordStats(delta); }

  void RunQueue(const std::string& domain, std::function<void(Result<uint64_t>)> done) override {
    remote_->RunQueue(domain, std::move(done));
  }

  uint32_t ShardFor(const std::string& qid) const override { return remote_->ShardFor(qid); }

 private:
  LocalEnqueue local_;
  std::shared_ptr<EnqueueBackend> remote_;
};

}  // namespace

std::shared_ptr<EnqueueBackend> MakeLocalFirstEnqueueBackend(LocalEnqueue local,
                                                             std::shared_ptr<EnqueueBackend> remote) {
  return std::make_shared<LocalFirstEnqueueBackend>(std::move(local), std::move(remote));
}

}  // namespace mx::ingress
