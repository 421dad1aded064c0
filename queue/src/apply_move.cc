// apply_move.cc — moving a draining shard's messages to the active shards
// (MoveOp, and Enqueue with `moved` on the target). See queue.proto MoveOp
// for the protocol; here: LOCK takes a message out of every index without
// changing its recipients, DONE deletes it, Import writes a copy with its
// recipients' state as it was.
#include "apply.h"
#include "keys.h"

namespace mx::queue {

// Messages with a recipient in delivery are skipped (the mover tries them
// again after the Ack); messages already locked keep their first target.
Status StateMachine::Applier::MoveLock(const v1::MoveOp& op, ApplyResult* res) {
  for (const auto& qid : op.qids()) {
    v1::Envelope env;
    bool found = false;
    if (auto st = b_.GetProto(sm_.msg_, qid, &env, &found); !st.ok()) return st;
    if (!found || env.moving() != op.retarget()) continue;
    if (op.retarget()) {  // its index entries went at the first LOCK
      env.set_moving_to(op.target());
      b_.PutProto(sm_.msg_, qid, env);
      res->qids.push_back(qid);
      continue;
    }
    std::vector<v1::Recipient> rcpts;
    bool leased = false;
    for (uint32_t i = 0; i < env.nrcpts(); ++i) {
      v1::Recipient r;
      bool have = false;
      if (auto st = b_.GetProto(sm_.rcpt_, keys::Rcpt(qid, i), &r, &have); !st.ok()) return st;
      if (!have) continue;
      leased = leased || r.status() == v1::RCPT_LEASED;
      rcpts.push_back(std::move(r));
    }
    if (leased) continue;
    for (const auto& r : rcpts) ClearIndex(r, qid);  // ready and retry entries; the records stay
    env.set_moving(true);
    env.set_moving_to(op.target());
    b_.PutProto(sm_.msg_, qid, env);
    res->qids.push_back(qid);
  }
  return Status::Ok();
}

// The copy is committed on the target: the message leaves this shard.
Status StateMachine::Applier::MoveDone(const v1::MoveOp& op, ApplyResult* res) {
  for (const auto& qid : op.qids()) {
    v1::Envelope env;
    bool found = false;
    if (auto st = b_.GetProto(sm_.msg_, qid, &env, &found); !st.ok()) return st;
    if (!found || !env.moving()) continue;                       // a repeated DONE
    if (auto st = RemoveMessage(qid, env); !st.ok()) return st;  // its index entries went at LOCK
    res->qids.push_back(qid);
  }
  return Status::Ok();
}

// The target's side: the envelope as it was (its priority, arrival, DSN
// flags), each recipient in its state: ready ones in the ready index at
// their sort key, deferred ones at their next attempt, held ones held,
// finished ones as records. Not counted as received (mailstats): it was,
// on the source.
Status StateMachine::Applier::Import(const v1::NewMessage& m, ApplyResult* res) {
  const auto& qid = m.envelope().qid();
  bool queued = false;
  if (auto st = RefuseIfQueued(qid, res, &queued); !st.ok() || queued) return st;
  v1::Envelope env = m.envelope();
  env.clear_moving();
  env.clear_moving_to();
  b_.PutProto(sm_.msg_, qid, env);
  b_.Put(sm_.msg_, keys::Body(qid), m.body());
  ++ctx_.counts.messages;
  ctx_.Added(qid);
  for (const auto& in : m.recipients()) {
    if (in.index() >= env.nrcpts()) continue;
    v1::Recipient r = in;
    const auto status = r.status() == v1::RCPT_LEASED ? v1::RCPT_READY : r.status();
    r.set_status(v1::RCPT_STATUS_UNSPECIFIED);
    r.clear_lease_owner();
    r.clear_lease_expiry_unix_us();
    if (status == v1::RCPT_READY) {
      MakeReady(&r, qid, sm_.SortKey(env, r, sm_.options_.retry_factor));
      ++res->made_ready;
    } else {
      ctx_.Move(v1::RCPT_STATUS_UNSPECIFIED, status);
      r.set_status(status);
      if (status == v1::RCPT_DEFERRED) {
        b_.Put(sm_.sched_, keys::Sched(r.next_attempt_unix_us(), qid, r.index()), "");
        ctx_.sched_floor = std::min(ctx_.sched_floor, r.next_attempt_unix_us());
      }
    }
    b_.PutProto(sm_.rcpt_, keys::Rcpt(qid, r.index()), r);
  }
  return Status::Ok();
}

}  // namespace mx::queue
