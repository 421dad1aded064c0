// policy_tester.cc — one policy evaluation, traced (mxctl policy test).
#include "mx/ingress/policy_tester.h"

#include <arpa/inet.h>

#include <future>

#include "mx/common/address.h"
#include "mx/common/log.h"

namespace mx::ingress {
namespace {

const char* KindName(Verdict::Kind k) {
  switch (k) {
    case Verdict::Kind::kNone: return "pass";
    case Verdict::Kind::kOk: return "ok";
    case Verdict::Kind::kRelay: return "relay";
    case Verdict::Kind::kReject: return "reject";
    case Verdict::Kind::kDiscard: return "discard";
  }
  return "?";
}

v1::PolicyTestStep* AddStep(v1::PolicyTestResponse* r, const std::string& stage, const std::string& subject,
                            const Verdict& v) {
  auto* s = r->add_steps();
  s->set_stage(stage);
  s->set_subject(subject);
  s->set_result(KindName(v.kind));
  s->set_reply(v.reply);
  s->set_why(v.why.empty() ? "no rule matched" : v.why);
  return s;
}

bool IsIp(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

}  // namespace

Result<std::unique_ptr<PolicyTester>> PolicyTester::Start(const Config& config, const Clock& clock) {
  auto dns = DnsChannel::Start(config.ingress.dns_servers, config.ingress.dns_timeout);
  if (!dns.ok()) return Status(dns.status().code(), "ingress.dns_servers: " + dns.status().message());
  std::unique_ptr<PolicyTester> t(new PolicyTester(std::make_unique<ClientLookup>(std::move(dns).value(), clock)));
  if (auto st = t->Reload(config); !st.ok()) log::Error("policy test: no policy loaded: " + st.message());
  return t;
}

Status PolicyTester::Reload(const Config& config) {
  {
    std::lock_guard lock(mu_);
    local_ = config.ingress;
  }
  return Install(Policy::Load(config.ingress, config.config_dir));
}

Status PolicyTester::ApplyBundle(const v1::PolicyBundle& bundle) {
  IngressConfig local;
  {
    std::lock_guard lock(mu_);
    local = local_;
  }
  return Install(Policy::FromBundle(bundle, &local));
}

Status PolicyTester::Install(Result<std::shared_ptr<const Policy>> p) {
  std::lock_guard lock(mu_);
  if (!p.ok()) {
    load_error_ = p.status();
    return p.status();
  }
  load_error_ = Status::Ok();
  policy_.store(*p);
  return Status::Ok();
}

Result<v1::PolicyTestResponse> PolicyTester::Test(const v1::PolicyTestRequest& req) const {
  if (!IsIp(req.client_ip())) return Status(Code::kInvalidArgument, "client_ip must be an IP address");
  if (req.recipients().empty()) return Status(Code::kInvalidArgument, "at least one recipient is required");
  auto policy = policy_.load();
  if (!policy) {
    std::lock_guard lock(mu_);
    return Status(Code::kFailedPrecondition, "no policy loaded: " + load_error_.message());
  }
  const Policy& pol = *policy;
  v1::PolicyTestResponse resp;
  resp.set_policy(pol.Describe());
  ClientInfo client{req.client_ip(), req.client_name().empty() ? "unknown" : req.client_name()};

  // connect: access/mynetworks, then what DNS says (name, DNSBL).
  Verdict connect = pol.CheckConnect(client);
  const bool reverse = pol.settings().reverse_dns && req.client_name().empty();
  std::vector<std::string> zones = pol.DnsblZonesFor(connect);
  if (reverse || !zones.empty()) {
    auto done = std::make_shared<std::promise<ClientFacts>>();
    auto facts_future = done->get_future();
    lookup_->Lookup(client.addr, reverse, zones, [done](ClientFacts f) { done->set_value(std::move(f)); });
    ClientFacts facts = facts_future.get();  // bounded by the DNS timeout
    for (const auto& a : facts.dnsbl) {
      auto* s = resp.add_steps();
      s->set_stage("dnsbl");
      s->set_subject(a.zone);
      s->set_result(DnsblResultName(a.kind));
      std::string answers;
      for (const auto& x : a.addrs) answers += (answers.empty() ? "" : ",") + x;
      s->set_why(a.kind == DnsblAnswer::Kind::kTempFail ? a.error + " (a temporary pass)" : answers);
    }
    connect = pol.FinishConnect(&client, connect, facts, reverse);
  }
  AddStep(&resp, "connect", client.name + " [" + client.addr + "]", connect);
  bool discard = connect.kind == Verdict::Kind::kDiscard;
  auto reject = [&](const std::string& reply) {
    if (resp.outcome().empty()) {
      resp.set_outcome("reject");
      resp.set_reply(reply);
    }
  };
  if (connect.rejected()) reject(connect.reply);

  // MAIL: a connect-stage rejection is answered here, as in a session.
  Verdict from;
  if (connect.rejected()) {
    from = connect;
  } else if (connect.kind != Verdict::Kind::kOk) {
    from = pol.CheckSender(req.sender());
  }
  AddStep(&resp, "mail", "<" + req.sender() + ">", from);
  if (from.rejected()) reject(from.reply);
  discard = discard || from.kind == Verdict::Kind::kDiscard;

  // RCPT: one step per recipient.
  const bool trusted = connect.kind == Verdict::Kind::kRelay || req.authenticated();
  bool any_accepted = false;
  for (const auto& rcpt_in : req.recipients()) {
    std::string rcpt = rcpt_in;
    if (rcpt.find('@') == std::string::npos) rcpt += "@" + pol.settings().hostname;
    RecipientVerdict v = pol.CheckRecipient(rcpt, trusted);
    auto* s = AddStep(&resp, "rcpt", "<" + rcpt + ">", v);
    for (const auto& a : v.addresses) s->add_addresses(a);
    if (v.rejected()) continue;  // other recipients may still be accepted
    any_accepted = true;
    discard = discard || v.kind == Verdict::Kind::kDiscard;
  }
  if (!any_accepted && !from.rejected()) {
    for (const auto& s : resp.steps()) {
      if (s.stage() == "rcpt" && s.result() == "reject") {
        reject(s.reply());
        break;
      }
    }
  }

  // DATA: header rules and the hop count.
  std::string block;
  for (const auto& h : req.headers()) block += h + "\r\n";
  block += "\r\n";
  Verdict data = pol.CheckHeaders(block);
  AddStep(&resp, "data", std::to_string(req.headers_size()) + " header(s)", data);
  if (data.rejected()) reject(data.reply);
  if (resp.outcome().empty()) resp.set_outcome(discard ? "discard" : "accept");
  return resp;
}

}  // namespace mx::ingress
