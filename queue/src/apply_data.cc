// apply_data.cc — the data path's commands: enqueue, lease, ack (with host
// status and the DSNs queued atomically), tick (due retries, expired
// leases), release; and the recipient transitions every handler shares.
#include <algorithm>

#include "apply.h"
#include "keys.h"
#include "mx/common/address.h"

namespace mx::queue {

void StateMachine::Applier::ClearIndex(const v1::Recipient& r, const std::string& qid) {
  if (r.status() == v1::RCPT_READY) {
    b_.Delete(sm_.ready_, keys::Ready(r.ready_priority(), qid, r.index()));
    ctx_.index_ops.push_back({&sm_.ready_index_, false, IndexKey{r.ready_priority(), qid, r.index()}});
  }
  if (r.status() == v1::RCPT_LEASED) {
    b_.Delete(sm_.lease_, keys::Lease(r.lease_expiry_unix_us(), qid, r.index()));
    ctx_.index_ops.push_back({&sm_.lease_index_, false, IndexKey{r.lease_expiry_unix_us(), qid, r.index()}});
  }
  if (r.status() == v1::RCPT_DEFERRED) b_.Delete(sm_.sched_, keys::Sched(r.next_attempt_unix_us(), qid, r.index()));
}

void StateMachine::Applier::MakeReady(v1::Recipient* r, const std::string& qid, int64_t priority) {
  ctx_.Move(r->status(), v1::RCPT_READY);
  r->set_status(v1::RCPT_READY);
  r->set_ready_priority(priority);
  r->clear_lease_owner();
  r->clear_lease_expiry_unix_us();
  b_.Put(sm_.ready_, keys::Ready(priority, qid, r->index()), "");
  ctx_.index_ops.push_back({&sm_.ready_index_, true, IndexKey{priority, qid, r->index()}});
}

Status StateMachine::Applier::Requeue(v1::Recipient* r, const std::string& qid, ApplyResult* res) {
  v1::Envelope env;
  bool found = false;
  if (auto st = b_.GetProto(sm_.msg_, qid, &env, &found); !st.ok()) return st;
  MakeReady(r, qid, sm_.SortKey(env, *r, sm_.options_.retry_factor));
  b_.PutProto(sm_.rcpt_, keys::Rcpt(qid, r->index()), *r);
  ++res->made_ready;
  return Status::Ok();
}

Status StateMachine::Applier::RefuseIfQueued(const std::string& qid, ApplyResult* res, bool* queued) {
  std::string existing;
  if (auto st = b_.Get(sm_.msg_, qid, &existing, queued); !st.ok()) return st;
  if (*queued) res->status = Status(Code::kAlreadyExists, "queue id " + qid + " exists");
  return Status::Ok();
}

Status StateMachine::Applier::Enqueue(const v1::NewMessage& m, int64_t now, ApplyResult* res) {
  const auto& qid = m.envelope().qid();
  bool queued = false;
  if (auto st = RefuseIfQueued(qid, res, &queued); !st.ok() || queued) return st;
  const auto& o = sm_.options_;
  v1::Envelope env = m.envelope();
  env.set_nrcpts(m.recipients_size());
  env.set_pending(m.recipients_size());
  if (env.arrival_unix_us() == 0) env.set_arrival_unix_us(now);
  env.set_priority(static_cast<int64_t>(env.size()) - env.precedence_class() * o.class_factor +
                   static_cast<int64_t>(m.recipients_size()) * o.recipient_factor);
  b_.PutProto(sm_.msg_, qid, env);
  b_.Put(sm_.msg_, keys::Body(qid), m.body());
  ++ctx_.counts.messages;
  ctx_.Added(qid);
  for (int i = 0; i < m.recipients_size(); ++i) {
    v1::Recipient r = m.recipients(i);
    r.set_index(i);
    r.set_status(v1::RCPT_STATUS_UNSPECIFIED);
    if (env.queue_only()) {  // QueueLA: deferred until the next queue run
      const int64_t next = env.arrival_unix_us() + o.queue_only_delay_us;
      ctx_.Move(v1::RCPT_STATUS_UNSPECIFIED, v1::RCPT_DEFERRED);
      r.set_status(v1::RCPT_DEFERRED);
      r.set_next_attempt_unix_us(next);
      r.set_last_reply("queued only: system load above QueueLA");
      b_.Put(sm_.sched_, keys::Sched(next, qid, i), "");
      ctx_.sched_floor = std::min(ctx_.sched_floor, next);
    } else {
      MakeReady(&r, qid, sm_.SortKey(env, r, o.retry_factor));
      ++res->made_ready;
    }
    b_.PutProto(sm_.rcpt_, keys::Rcpt(qid, i), r);
  }
  auto& st = ctx_.Stats(env.mailer_from());
  st.set_msgsfr(st.msgsfr() + 1);
  st.set_bytes_from(st.bytes_from() + env.size());
  return Status::Ok();
}

// The leader chose the items from its ready index; a LOCK for a move may
// have been committed between that choice and this command: a locked
// message keeps its recipients READY (the copy on the target carries them)
// but is never leased here, or it would be delivered from both shards.
Status StateMachine::Applier::Lease(const v1::LeaseOp& op, ApplyResult* res) {
  std::string env_qid;  // items come grouped by message: one envelope read per message
  bool env_moving = false;
  for (const auto& item : op.items()) {
    v1::Recipient r;
    bool found = false;
    auto key = keys::Rcpt(item.qid(), item.index());
    if (auto st = b_.GetProto(sm_.rcpt_, key, &r, &found); !st.ok()) return st;
    if (!found || r.status() != v1::RCPT_READY) continue;  // taken or finished meanwhile
    if (item.qid() != env_qid) {
      v1::Envelope env;
      bool have = false;
      if (auto st = b_.GetProto(sm_.msg_, item.qid(), &env, &have); !st.ok()) return st;
      env_qid = item.qid();
      env_moving = have && env.moving();
    }
    if (env_moving) continue;
    ClearIndex(r, item.qid());
    ctx_.Move(r.status(), v1::RCPT_LEASED);
    r.set_status(v1::RCPT_LEASED);
    r.set_lease_owner(op.worker());
    r.set_lease_expiry_unix_us(op.expiry_unix_us());
    b_.PutProto(sm_.rcpt_, key, r);
    b_.Put(sm_.lease_, keys::Lease(op.expiry_unix_us(), item.qid(), item.index()), "");
    ctx_.index_ops.push_back({&sm_.lease_index_, true, IndexKey{op.expiry_unix_us(), item.qid(), item.index()}});
    res->leased.push_back(item);
    res->leased_rcpts.push_back(std::move(r));
  }
  return Status::Ok();
}

Status StateMachine::Applier::Ack(const v1::AckOp& op, int64_t now, ApplyResult* res) {
  std::map<std::string, v1::Envelope> envs;  // touched envelopes, written once
  for (const auto& result : op.results()) {
    const auto& qid = result.qid();
    auto it = envs.find(qid);
    if (it == envs.end()) {
      v1::Envelope env;
      bool found = false;
      if (auto st = b_.GetProto(sm_.msg_, qid, &env, &found); !st.ok()) return st;
      if (!found) continue;  // already finished and removed
      // Locked for a move (a late Ack after its lease expired): the copy on
      // the target carries the state from before; this result is dropped.
      if (env.moving()) continue;
      it = envs.emplace(qid, std::move(env)).first;
    }
    if (auto st = AckRecipient(result, now, &it->second); !st.ok()) return st;
  }
  for (auto& [qid, env] : envs) {
    if (env.pending() > 0) {
      b_.PutProto(sm_.msg_, qid, env);
    } else if (auto st = RemoveMessage(qid, env); !st.ok()) {
      return st;
    }
  }
  if (auto st = RecordHosts(op, now); !st.ok()) return st;
  for (const auto& dsn : op.dsns()) {
    ApplyResult ignored;
    if (auto st = Enqueue(dsn, now, &ignored); !st.ok()) return st;
    res->made_ready += ignored.made_ready;
  }
  return Status::Ok();
}

Status StateMachine::Applier::AckRecipient(const v1::RecipientResult& result, int64_t now, v1::Envelope* env) {
  const auto& qid = result.qid();
  v1::Recipient r;
  bool found = false;
  auto key = keys::Rcpt(qid, result.index());
  if (auto st = b_.GetProto(sm_.rcpt_, key, &r, &found); !st.ok()) return st;
  if (!found || IsFinal(r.status())) return Status::Ok();  // duplicate ack
  ClearIndex(r, qid);
  r.set_last_attempt_unix_us(now);
  r.set_last_reply(result.reply());
  if (result.delay_warned()) r.set_delay_warned(true);
  r.clear_lease_owner();
  r.clear_lease_expiry_unix_us();
  if (result.outcome() == v1::OUTCOME_DELIVERED || result.outcome() == v1::OUTCOME_BOUNCED) {
    auto to = result.outcome() == v1::OUTCOME_DELIVERED ? v1::RCPT_DELIVERED : v1::RCPT_BOUNCED;
    ctx_.Move(r.status(), to);
    r.set_status(to);
    env->set_pending(env->pending() > 0 ? env->pending() - 1 : 0);
    if (to == v1::RCPT_DELIVERED) {
      auto& st = ctx_.Stats(result.mailer());
      st.set_msgsto(st.msgsto() + 1);
      st.set_bytes_to(st.bytes_to() + result.bytes());
    }
  } else {  // deferred (and anything unknown)
    ctx_.Move(r.status(), v1::RCPT_DEFERRED);
    r.set_status(v1::RCPT_DEFERRED);
    if (!result.throttled()) r.set_attempts(r.attempts() + 1);  // a delivery limit is not a failure
    const int64_t next = result.next_attempt_unix_us() > now ? result.next_attempt_unix_us() : now;
    r.set_next_attempt_unix_us(next);
    b_.Put(sm_.sched_, keys::Sched(next, qid, r.index()), "");
    ctx_.sched_floor = std::min(ctx_.sched_floor, next);  // a (new) leader's clock may lag
  }
  b_.PutProto(sm_.rcpt_, key, r);
  return Status::Ok();
}

// The message leaves the queue: every recipient is final (Ack), or it moved
// to another shard (MoveOp DONE). No index entry is left to clear.
Status StateMachine::Applier::RemoveMessage(const std::string& qid, const v1::Envelope& env) {
  for (uint32_t i = 0; i < env.nrcpts(); ++i) {
    v1::Recipient r;
    bool found = false;
    auto key = keys::Rcpt(qid, i);
    if (auto st = b_.GetProto(sm_.rcpt_, key, &r, &found); !st.ok()) return st;
    if (found) {
      ctx_.Move(r.status(), v1::RCPT_STATUS_UNSPECIFIED);
      b_.Delete(sm_.rcpt_, key);
    }
  }
  b_.Delete(sm_.msg_, qid);
  b_.Delete(sm_.msg_, keys::Body(qid));
  --ctx_.counts.messages;
  return Status::Ok();
}

// PersistentHostStatus: the last attempt per MX host, cluster-wide.
Status StateMachine::Applier::RecordHosts(const v1::AckOp& op, int64_t now) {
  for (const auto& h : op.hosts()) {
    if (h.host().empty()) continue;
    const std::string key = ToLower(h.host());
    v1::HostStatus hs;
    bool have = false;
    if (auto st = b_.GetProto(sm_.host_, key, &hs, &have); !st.ok()) return st;
    hs.set_host(key);
    hs.set_last_attempt_unix_us(now);
    hs.set_last_reply(h.reply());
    if (h.ok()) {
      hs.set_consecutive_failures(0);
      hs.set_last_success_unix_us(now);
    } else {
      hs.set_consecutive_failures(hs.consecutive_failures() + 1);
    }
    b_.PutProto(sm_.host_, key, hs);
  }
  return Status::Ok();
}

// Due deferrals (from disk, from the floor: everything below is consumed)
// and expired leases (from the in-memory mirror, checked against the record)
// become ready.
Status StateMachine::Applier::Tick(const v1::TickOp& op, int64_t now, ApplyResult* res) {
  const uint32_t limit = op.max_items() ? op.max_items() : 10000;
  std::vector<keys::Item> due;
  bool more = false;
  {
    auto it = b_.Iterator(sm_.sched_);
    for (it->Seek(keys::Sched(ctx_.sched_floor)); it->Valid(); it->Next()) {
      keys::Item item;
      if (!keys::Decode(it->key().ToStringView(), &item)) continue;
      if (item.order > now) break;
      if (due.size() >= limit) {
        more = true;
        break;
      }
      due.push_back(std::move(item));
    }
    if (auto s = it->status(); !s.ok()) return FromRocks(s, "scan sched");
  }
  // Everything before now is consumed unless the limit cut the scan short.
  ctx_.sched_floor = more ? due.back().order : now;
  for (const auto& item : due) b_.Delete(sm_.sched_, keys::Sched(item.order, item.qid, item.index));
  {
    std::lock_guard lock(sm_.mem_mu_);
    for (const auto& k : sm_.lease_index_) {
      if (k.order > now || due.size() >= 2 * static_cast<size_t>(limit)) break;
      due.push_back(keys::Item{k.order, k.qid, k.index});
    }
  }
  for (const auto& item : due) {
    v1::Recipient r;
    bool found = false;
    if (auto st = b_.GetProto(sm_.rcpt_, keys::Rcpt(item.qid, item.index), &r, &found); !st.ok()) return st;
    if (!found) continue;
    const bool expired_lease =
        r.status() == v1::RCPT_LEASED && r.lease_expiry_unix_us() == item.order && r.lease_expiry_unix_us() <= now;
    const bool retry_due =
        r.status() == v1::RCPT_DEFERRED && r.next_attempt_unix_us() == item.order && r.next_attempt_unix_us() <= now;
    if (!expired_lease && !retry_due) continue;
    if (expired_lease) ClearIndex(r, item.qid);
    if (auto st = Requeue(&r, item.qid, res); !st.ok()) return st;
  }
  return Status::Ok();
}

// Leases given back: the items named, or every lease of an owner prefix
// (older incarnations of a worker) but keep_owner's.
Status StateMachine::Applier::Release(const v1::ReleaseOp& op, ApplyResult* res) {
  std::vector<v1::RcptRef> candidates(op.items().begin(), op.items().end());
  if (!op.owner_prefix().empty()) {
    std::lock_guard lock(sm_.mem_mu_);
    for (const auto& k : sm_.lease_index_) {  // bounded by leases in flight
      v1::RcptRef ref;
      ref.set_qid(k.qid);
      ref.set_index(k.index);
      candidates.push_back(std::move(ref));
    }
  }
  for (const auto& c : candidates) {
    v1::Recipient r;
    bool found = false;
    if (auto st = b_.GetProto(sm_.rcpt_, keys::Rcpt(c.qid(), c.index()), &r, &found); !st.ok()) return st;
    if (!found || r.status() != v1::RCPT_LEASED) continue;
    const bool by_owner = !op.owner_prefix().empty() && r.lease_owner() != op.keep_owner() &&
                          r.lease_owner().rfind(op.owner_prefix(), 0) == 0;
    const bool by_item = std::any_of(op.items().begin(), op.items().end(), [&](const v1::RcptRef& i) {
      return i.qid() == c.qid() && i.index() == c.index();
    });
    if (!by_owner && !by_item) continue;
    ClearIndex(r, c.qid());
    if (auto st = Requeue(&r, c.qid(), res); !st.ok()) return st;
  }
  return Status::Ok();
}

}  // namespace mx::queue
