// apply_admin.cc — operator actions: queue runs (-qI/-qS/-qR, ETRN),
// hold / release / delete / bounce by filter, host-status purges, mailstats
// deltas and resets.
#include "apply.h"
#include "keys.h"
#include "mx/common/address.h"

namespace mx::queue {
namespace {

// A queue run's or operator action's recipient filters (domain: lower-case).
bool RcptMatches(const v1::RunOp& f, const std::string& domain, const v1::Recipient& r) {
  if (!f.rcpt_substring().empty() && r.address().find(f.rcpt_substring()) == std::string::npos) return false;
  return domain.empty() || InDomain(DomainOf(r.address()), domain);
}

}  // namespace

// A queue run: every deferred recipient (the sched index) is checked
// against the filters; O(deferred), like sendmail's -qR.
Status StateMachine::Applier::Run(const v1::RunOp& op, ApplyResult* res) {
  const std::string domain = ToLower(op.domain());
  std::vector<keys::Item> deferred;
  {
    auto it = b_.Iterator(sm_.sched_);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      keys::Item item;
      if (keys::Decode(it->key().ToStringView(), &item)) deferred.push_back(std::move(item));
    }
    if (auto s = it->status(); !s.ok()) return FromRocks(s, "scan sched");
  }
  for (const auto& item : deferred) {
    if (!op.qid_substring().empty() && item.qid.find(op.qid_substring()) == std::string::npos) continue;
    v1::Recipient r;
    bool found = false;
    if (auto st = b_.GetProto(sm_.rcpt_, keys::Rcpt(item.qid, item.index), &r, &found); !st.ok()) return st;
    if (!found || r.status() != v1::RCPT_DEFERRED || r.next_attempt_unix_us() != item.order) continue;
    if (!RcptMatches(op, domain, r)) continue;
    if (!op.sender_substring().empty()) {
      v1::Envelope env;
      bool have = false;
      if (auto st = b_.GetProto(sm_.msg_, item.qid, &env, &have); !st.ok()) return st;
      if (!have || env.sender().find(op.sender_substring()) == std::string::npos) continue;
    }
    ClearIndex(r, item.qid);
    if (auto st = Requeue(&r, item.qid, res); !st.ok()) return st;
  }
  return Status::Ok();
}

// Operator actions by filter: a scan of every message, like the List behind mailq.
Status StateMachine::Applier::Manage(const v1::ManageOp& op, ApplyResult* res) {
  const auto& f = op.filter();
  const std::string domain = ToLower(f.domain());
  std::vector<std::pair<std::string, v1::Envelope>> messages;
  {
    auto it = b_.Iterator(sm_.msg_);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto key = it->key().ToStringView();
      if (keys::IsBodyKey(key)) continue;
      if (!f.qid_substring().empty() && key.find(f.qid_substring()) == std::string_view::npos) continue;
      v1::Envelope env;
      if (!env.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
      if (!f.sender_substring().empty() && env.sender().find(f.sender_substring()) == std::string::npos) continue;
      if (env.moving()) {  // leaving a draining shard: the copy on its new shard is the one to manage
        ++res->skipped;
        continue;
      }
      messages.emplace_back(std::string(key), std::move(env));
    }
    if (auto s = it->status(); !s.ok()) return FromRocks(s, "scan msg");
  }
  for (auto& [qid, env] : messages) {
    std::vector<v1::Recipient> rcpts(env.nrcpts());
    std::vector<bool> present(env.nrcpts(), false);
    bool any_match = false, leased = false;
    for (uint32_t i = 0; i < env.nrcpts(); ++i) {
      bool found = false;
      if (auto st = b_.GetProto(sm_.rcpt_, keys::Rcpt(qid, i), &rcpts[i], &found); !st.ok()) return st;
      present[i] = found;
      if (!found || IsFinal(rcpts[i].status())) continue;
      any_match = any_match || RcptMatches(f, domain, rcpts[i]);
      leased = leased || rcpts[i].status() == v1::RCPT_LEASED;
    }
    if (!any_match) continue;
    Status st;
    switch (op.action()) {
      case v1::ManageOp::MANAGE_HOLD:
      case v1::ManageOp::MANAGE_RELEASE: st = HoldOrRelease(op, qid, env, rcpts, present, res); break;
      case v1::ManageOp::MANAGE_DELETE:
        if (leased) {  // a worker is delivering it: deleting now could not stop that
          ++res->skipped;
          break;
        }
        st = Delete(qid, env, rcpts, present, res);
        break;
      case v1::ManageOp::MANAGE_BOUNCE: st = MarkBounce(op, qid, env, rcpts, present, res); break;
      default: return Status(Code::kInvalidArgument, "unknown manage action");
    }
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

Status StateMachine::Applier::HoldOrRelease(const v1::ManageOp& op, const std::string& qid, const v1::Envelope& env,
                                            std::vector<v1::Recipient>& rcpts, const std::vector<bool>& present,
                                            ApplyResult* res) {
  const std::string domain = ToLower(op.filter().domain());
  for (uint32_t i = 0; i < env.nrcpts(); ++i) {
    auto& r = rcpts[i];
    if (!present[i] || !RcptMatches(op.filter(), domain, r)) continue;
    if (op.action() == v1::ManageOp::MANAGE_HOLD && (r.status() == v1::RCPT_READY || r.status() == v1::RCPT_DEFERRED)) {
      ClearIndex(r, qid);
      ctx_.Move(r.status(), v1::RCPT_HELD);
      r.set_status(v1::RCPT_HELD);
      b_.PutProto(sm_.rcpt_, keys::Rcpt(qid, i), r);
      ++res->recipients;
    } else if (op.action() == v1::ManageOp::MANAGE_RELEASE && r.status() == v1::RCPT_HELD) {
      if (auto st = Requeue(&r, qid, res); !st.ok()) return st;
      ++res->recipients;
    }
  }
  return Status::Ok();
}

Status StateMachine::Applier::Delete(const std::string& qid, const v1::Envelope& env, std::vector<v1::Recipient>& rcpts,
                                     const std::vector<bool>& present, ApplyResult* res) {
  for (uint32_t i = 0; i < env.nrcpts(); ++i) {
    if (!present[i]) continue;
    if (!IsFinal(rcpts[i].status())) {
      ClearIndex(rcpts[i], qid);
      ++res->recipients;
    }
    ctx_.Move(rcpts[i].status(), v1::RCPT_STATUS_UNSPECIFIED);  // finished ones are counted too (RemoveMessage)
    b_.Delete(sm_.rcpt_, keys::Rcpt(qid, i));
  }
  b_.Delete(sm_.msg_, qid);
  b_.Delete(sm_.msg_, keys::Body(qid));
  --ctx_.counts.messages;
  ++res->messages;
  return Status::Ok();
}

// Marked, and made ready: the next delivery returns it with a DSN, which
// only a worker can write. Recipients in delivery are left alone.
Status StateMachine::Applier::MarkBounce(const v1::ManageOp& op, const std::string& qid, const v1::Envelope& env,
                                         std::vector<v1::Recipient>& rcpts, const std::vector<bool>& present,
                                         ApplyResult* res) {
  const std::string domain = ToLower(op.filter().domain());
  for (uint32_t i = 0; i < env.nrcpts(); ++i) {
    auto& r = rcpts[i];
    if (!present[i] || !RcptMatches(op.filter(), domain, r) || IsFinal(r.status())) continue;
    if (r.status() == v1::RCPT_LEASED) {
      ++res->skipped;
      continue;
    }
    r.set_operator_bounce(true);
    if (r.status() == v1::RCPT_READY) {
      b_.PutProto(sm_.rcpt_, keys::Rcpt(qid, i), r);
    } else {
      ClearIndex(r, qid);
      if (auto st = Requeue(&r, qid, res); !st.ok()) return st;
    }
    ++res->recipients;
  }
  return Status::Ok();
}

// purgestat: one host's status, or every host's.
Status StateMachine::Applier::PurgeHosts(const v1::PurgeHostsOp& op, ApplyResult* res) {
  std::vector<std::string> hosts;
  if (!op.host().empty()) {
    hosts.push_back(ToLower(op.host()));
  } else {
    auto it = b_.Iterator(sm_.host_);
    for (it->SeekToFirst(); it->Valid(); it->Next()) hosts.push_back(it->key().ToString());
  }
  for (const auto& k : hosts) {
    std::string v;
    bool have = false;
    if (auto st = b_.Get(sm_.host_, k, &v, &have); !st.ok()) return st;
    if (!have) continue;
    b_.Delete(sm_.host_, k);
    ++res->purged;
  }
  return Status::Ok();
}

// mailstats: deltas (rejections counted at ingress), or a reset first.
Status StateMachine::Applier::Stats(const v1::StatsOp& op, int64_t now) {
  if (op.reset()) {
    // Counted so far (in the store and earlier in this entry) is gone.
    ctx_.stats.clear();
    std::vector<std::string> mailers;
    auto it = b_.Iterator(sm_.stats_);
    for (it->SeekToFirst(); it->Valid(); it->Next()) mailers.push_back(it->key().ToString());
    for (const auto& m : mailers) b_.Delete(sm_.stats_, m);
    b_.Put(sm_.meta_, kStatsSinceKey, EncodeU64(now));
  }
  for (const auto& d : op.deltas()) AddStats(&ctx_.Stats(d.mailer()), d);
  ctx_.stats_touched = true;
  return Status::Ok();
}

}  // namespace mx::queue
