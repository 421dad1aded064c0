// format.cc — mailq and mailstats output in the layout sendmail operators know.
#include "format.h"

#include "mx/common/log.h"

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace mx::control {
namespace {

std::string QTime(int64_t unix_us) {
  time_t t = static_cast<time_t>(unix_us / 1'000'000);
  tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%a %b %d %H:%M", &tm);
  return buf;
}

std::string Kb(uint64_t bytes) {
  return std::to_string((bytes + 1023) / 1024) + "K";
}

std::string Pad(const std::string& s, size_t width, bool right) {
  if (s.size() >= width) return s;
  return right ? std::string(width - s.size(), ' ') + s : s + std::string(width - s.size(), ' ');
}

}  // namespace

std::string FormatPartial(const google::protobuf::RepeatedPtrField<v1::ShardFailure>& failed) {
  if (failed.empty()) return "";
  std::string out = "partial answer: ";
  for (int k = 0; k < failed.size(); ++k) {
    out +=
        (k ? "; shard " : "shard ") + std::to_string(failed[k].shard()) + " did not answer (" + failed[k].error() + ")";
  }
  return out + "\n";
}

std::string FormatMailq(const v1::MailqResponse& resp) {
  const std::string partial = resp.failed_shards().empty() ? "" : " (partial: some shards did not answer)";
  if (resp.matched() == 0) return "Mail queue is empty" + partial + "\n";
  std::string out =
      "\t\tmx queue (" + std::to_string(resp.matched()) + (resp.matched() == 1 ? " request" : " requests") + ")\n";
  out += "-----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------\n";
  for (const auto& m : resp.messages()) {
    const auto& e = m.envelope();
    bool leased = false;
    for (const auto& r : m.recipients()) leased = leased || r.status() == v1::RCPT_LEASED;
    out += Pad(e.qid() + (leased ? "*" : " "), 15, false) + Pad(std::to_string(e.size()), 8, true) + " " +
           QTime(e.arrival_unix_us()) + " <" + (e.sender().empty() ? "" : e.sender()) + ">\n";
    std::string shown_reason;
    for (const auto& r : m.recipients()) {
      if (r.status() == v1::RCPT_HELD) out += "                 (Held by the operator: mxctl release)\n";
      if (r.status() == v1::RCPT_DEFERRED && !r.last_reply().empty() && r.last_reply() != shown_reason) {
        out += "                 (Deferred: " + r.last_reply() + ")\n";
        shown_reason = r.last_reply();
      }
      out += "                                         <" + r.address() + ">\n";
    }
  }
  out += "\t\tTotal requests: " + std::to_string(resp.matched()) + partial + "\n";
  return out;
}

std::string FormatMailstats(const v1::MailstatsResponse& resp) {
  std::string out = "Statistics from " + (resp.since_unix_us() ? QTime(resp.since_unix_us()) : std::string("-")) + "\n";
  out += " M   msgsfr  bytes_from   msgsto    bytes_to  msgsrej msgsdis  Mailer\n";
  uint64_t t[6] = {};
  int i = 0;
  for (const auto& m : resp.mailers()) {
    out += Pad(std::to_string(i++), 2, true) + " " + Pad(std::to_string(m.msgsfr()), 8, true) + " " +
           Pad(Kb(m.bytes_from()), 11, true) + " " + Pad(std::to_string(m.msgsto()), 8, true) + " " +
           Pad(Kb(m.bytes_to()), 11, true) + " " + Pad(std::to_string(m.msgsrej()), 8, true) + " " +
           Pad(std::to_string(m.msgsdis()), 7, true) + "  " + m.mailer() + "\n";
    t[0] += m.msgsfr(), t[1] += m.bytes_from(), t[2] += m.msgsto(), t[3] += m.bytes_to(), t[4] += m.msgsrej(),
        t[5] += m.msgsdis();
  }
  out += "=====================================================================\n";
  out += " T " + Pad(std::to_string(t[0]), 8, true) + " " + Pad(Kb(t[1]), 11, true) + " " +
         Pad(std::to_string(t[2]), 8, true) + " " + Pad(Kb(t[3]), 11, true) + " " + Pad(std::to_string(t[4]), 8, true) +
         " " + Pad(std::to_string(t[5]), 7, true) + "\n";
  if (!resp.failed_shards().empty()) {
    out += " (partial: the sums leave out shard";
    for (int k = 0; k < resp.failed_shards_size(); ++k) {
      out += (k ? ", " : " ") + std::to_string(resp.failed_shards(k).shard());
    }
    out += ", which did not answer)\n";
  }
  return out;
}

std::string FormatClusterStatus(const v1::ClusterStatusResponse& resp) {
  // One row per replica, grouped by shard; lag is how far its applied index
  // trails the highest commit index any replica of the shard reports.
  struct Row {
    uint32_t shard;
    uint64_t node;
    const v1::ReplicaStatus* r;
    std::string address;
  };
  std::vector<Row> rows;
  std::map<uint32_t, uint64_t> commit;
  for (const auto& n : resp.nodes()) {
    for (const auto& r : n.replicas()) {
      rows.push_back(Row{r.shard(), n.node_id(), &r, n.address()});
      commit[r.shard()] = std::max(commit[r.shard()], r.commit_index());
    }
  }
  std::sort(rows.begin(), rows.end(),
            [](const Row& a, const Row& b) { return std::tie(a.shard, a.node) < std::tie(b.shard, b.node); });
  std::string out = "Shards: " + std::to_string(resp.shards()) + "\n";
  for (const auto& info : resp.shard_map()) {
    if (info.state() == v1::ShardInfo::SHARD_ACTIVE) continue;  // the usual case: said by the table below
    std::string name = v1::ShardInfo::State_Name(info.state());
    if (name.starts_with("SHARD_")) name = name.substr(6);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    if (info.state() == v1::ShardInfo::SHARD_DRAINING && info.move())
      name += ", moving its messages to the active shards";
    out += "shard " + std::to_string(info.shard()) + ": " + name + "\n";
  }
  out += Pad("shard", 6, false) + Pad("node", 6, false) + Pad("role", 10, false) + Pad("term", 6, true) +
         Pad("commit", 10, true) + Pad("applied", 10, true) + Pad("lag", 7, true) + Pad("snapshot", 10, true) +
         Pad("messages", 10, true) + "  address\n";
  for (const auto& row : rows) {
    const auto& r = *row.r;
    uint64_t lag = commit[row.shard] > r.applied_index() ? commit[row.shard] - r.applied_index() : 0;
    out += Pad(std::to_string(row.shard), 6, false) + Pad(std::to_string(row.node), 6, false) +
           Pad(r.role(), 10, false) + Pad(std::to_string(r.term()), 6, true) +
           Pad(std::to_string(r.commit_index()), 10, true) + Pad(std::to_string(r.applied_index()), 10, true) +
           Pad(std::to_string(lag), 7, true) + Pad(std::to_string(r.snapshot_index()), 10, true) +
           Pad(std::to_string(r.messages()), 10, true) + "  " + row.address + "\n";
  }
  for (const auto& n : resp.nodes()) {
    for (const auto& r : n.replicas()) {
      if (r.role() != "leader") continue;
      out += "shard " + std::to_string(r.shard()) + " queue: " + std::to_string(r.messages()) +
             " messages; recipients " + std::to_string(r.ready()) + " ready, " + std::to_string(r.leased()) +
             " in delivery, " + std::to_string(r.deferred()) + " deferred, " + std::to_string(r.held()) +
             " held; oldest " +
             (r.oldest_age_seconds() > 0 ? log::FormatDelay(r.oldest_age_seconds() * 1'000'000) : "-") + "\n";
      out += "shard " + std::to_string(r.shard()) + " leader " + std::to_string(r.node_id()) + " members:";
      for (const auto& m : r.members()) {
        out += " " + std::to_string(m.id()) + "(" + m.role() + ", " + m.raft_address() + ", behind " +
               std::to_string(r.last_index() > m.match_index() ? r.last_index() - m.match_index() : 0) +
               (m.answering() ? "" : ", silent") + ")";
      }
      out += "\n";
    }
  }
  for (const auto& u : resp.unreachable()) out += "unreachable: " + u.address() + " (" + u.error() + ")\n";
  if (resp.processes_size() > 0) {
    out += "Processes:\n";
    out += Pad("name", 14, false) + Pad("roles", 20, false) + Pad("state", 10, false) + Pad("policy", 14, false) +
           Pad("sessions", 9, true) + Pad("in-flight", 10, true) + Pad("seen", 8, true) +
           "  host, version, listening\n";
    for (const auto& p : resp.processes()) {
      std::string roles;
      for (const auto& r : p.roles()) roles += (roles.empty() ? "" : ",") + r;
      if (p.roles_size() == 4) roles = "all";
      const int64_t ago_s = (resp.now_unix_us() - p.last_seen_unix_us()) / 1'000'000;
      // Heartbeats come every 2 s: a process silent for 30 s is presumed gone.
      std::string state = ago_s > 30                 ? "silent"
                          : p.drain() && p.drained() ? "drained"
                          : p.drain()                ? "draining"
                                                     : "active";
      out += Pad(p.name(), 14, false) + Pad(roles + " ", 20, false) + Pad(state, 10, false) +
             Pad((p.policy_version().empty() ? "-" : p.policy_version()) + " ", 14, false) +
             Pad(std::to_string(p.sessions()), 9, true) + Pad(std::to_string(p.in_flight()), 10, true) +
             Pad(std::to_string(std::max<int64_t>(ago_s, 0)) + "s", 8, true) + "  " + p.host() + ", " + p.version() +
             (p.addresses().empty() ? "" : ", " + p.addresses()) + "\n";
    }
  }
  return out;
}

std::string FormatHostStatus(const v1::HostStatusResponse& resp) {
  if (resp.hosts().empty()) {
    return resp.failed_shards().empty() ? "Host status is empty\n"
                                        : "Host status is empty (partial: some shards did not answer)\n";
  }
  std::string out = Pad("Hostname", 32, false) + " " + Pad("How long ago", 12, true) + "  " + Pad("Failures", 8, true) +
                    "  Results\n";
  for (const auto& h : resp.hosts()) {
    int64_t ago = resp.now_unix_us() - h.last_attempt_unix_us();
    out += Pad(h.host(), 32, false) + " " + Pad(log::FormatDelay(ago > 0 ? ago : 0), 12, true) + "  " +
           Pad(std::to_string(h.consecutive_failures()), 8, true) + "  " +
           (h.consecutive_failures() == 0 ? std::string("OK") : h.last_reply()) + "\n";
  }
  return out;
}

std::string FormatSites(const v1::SitesResponse& resp) {
  if (resp.sites().empty()) return "No site is suspended or slowed\n";
  std::string out =
      Pad("Site", 28, false) + " " + Pad("State", 9, false) + " " + Pad("For", 10, true) + "  By / reason\n";
  for (const auto& s : resp.sites()) {
    int64_t left = s.until_unix_us() - resp.now_unix_us();
    std::string state = s.suspended() ? "suspended" : "slowed";
    std::string limits;
    if (!s.suspended()) {
      if (s.max_connections()) limits += " max_connections=" + std::to_string(s.max_connections());
      if (s.message_rate_count()) {
        limits +=
            " rate=" + std::to_string(s.message_rate_count()) + "/" + std::to_string(s.message_rate_period_s()) + "s";
      }
    }
    out += Pad(s.site(), 28, false) + " " + Pad(state, 9, false) + " " +
           Pad(log::FormatDelay(left > 0 ? left : 0), 10, true) + "  " + s.by() + limits + ": " + s.reason() + "\n";
  }
  return out;
}

// "2026-11-23 20:01" (UTC).
static std::string Minute(int64_t unix_us) {
  time_t t = static_cast<time_t>(unix_us / 1'000'000);
  tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

std::string FormatSuppressions(const v1::SuppressionsResponse& resp) {
  if (resp.entries().empty())
    return resp.total() ? "No such address on the suppression list\n" : "The suppression list is empty\n";
  std::string out = Pad("Address", 36, false) + " " + Pad("Since", 20, false) + "  Class / by: reason\n";
  for (const auto& e : resp.entries()) {
    out += Pad(e.address(), 36, false) + " " + Pad(Minute(e.added_unix_us()), 20, false) + "  " + e.bounce_class() +
           " / " + e.by() + ": " + e.reason() + "\n";
  }
  if (resp.total() > static_cast<uint64_t>(resp.entries_size())) {
    out += "(" + std::to_string(resp.entries_size()) + " newest of " + std::to_string(resp.total()) + ")\n";
  }
  return out;
}

std::string FormatPolicyTest(const v1::PolicyTestResponse& resp) {
  std::string out;
  for (const auto& s : resp.steps()) {
    std::string detail = s.reply().empty() ? s.why() : s.reply() + "  (" + s.why() + ")";
    if (s.addresses_size() > 0 && !(s.addresses_size() == 1 && "<" + s.addresses(0) + ">" == s.subject())) {
      std::string list;
      for (const auto& a : s.addresses()) list += (list.empty() ? "" : ", ") + a;
      detail += " -> " + list;
    }
    out += Pad(s.stage(), 9, false) + Pad(s.subject(), 34, false) + Pad(s.result(), 9, false) + detail + "\n";
  }
  out += Pad("outcome", 9, false) + resp.outcome() + (resp.reply().empty() ? "" : ": " + resp.reply()) + "\n";
  if (!resp.policy().empty()) out += Pad("policy", 9, false) + resp.policy() + "\n";
  return out;
}

std::string FormatInspect(const v1::InspectResponse& resp) {
  const auto& e = resp.message().envelope();
  auto line = [](const std::string& k, const std::string& v) { return Pad(k + ":", 12, false) + v + "\n"; };
  std::string out = line("Queue ID", e.qid() + " (shard " + std::to_string(resp.shard()) + ")");
  out += line("Arrived", QTime(e.arrival_unix_us()) + " UTC at " + (e.received_by().empty() ? "?" : e.received_by()));
  out += line("Sender", "<" + e.sender() + ">" + (e.is_dsn() ? " (a DSN)" : ""));
  out +=
      line("Size", std::to_string(resp.body_bytes()) + " bytes, " + (e.body_type().empty() ? "7BIT" : e.body_type()));
  out += line("Priority", std::to_string(e.priority()) + ", class " + std::to_string(e.precedence_class()));
  out += line("Client", (e.client_name().empty() ? "unknown" : e.client_name()) + " [" + e.client_addr() + "], helo " +
                            e.helo() + (e.auth_id().empty() ? "" : ", auth " + e.auth_id()));
  if (!e.envid().empty() || !e.ret().empty()) out += line("DSN", "ENVID=" + e.envid() + " RET=" + e.ret());
  if (!e.msgid().empty()) out += line("Message-ID", e.msgid());
  out += "Recipients:\n";
  for (const auto& r : resp.message().recipients()) {
    std::string state = r.status() == v1::RCPT_READY      ? "ready"
                        : r.status() == v1::RCPT_LEASED   ? "in delivery"
                        : r.status() == v1::RCPT_DEFERRED ? "deferred until " + QTime(r.next_attempt_unix_us()) + " UTC"
                        : r.status() == v1::RCPT_HELD     ? "held"
                        : r.status() == v1::RCPT_DELIVERED ? "delivered"
                        : r.status() == v1::RCPT_BOUNCED   ? "bounced"
                                                           : "?";
    if (r.operator_bounce()) state += ", to be bounced";
    out += "  <" + r.address() + ">  " + state + ", " + std::to_string(r.attempts()) + " attempt(s)";
    if (r.last_attempt_unix_us() > 0) out += ", last " + QTime(r.last_attempt_unix_us()) + " UTC";
    out += "\n";
    if (!r.last_reply().empty()) out += "      " + r.last_reply() + "\n";
  }
  out += "Headers:\n";
  size_t pos = 0;
  const std::string& h = resp.headers();
  while (pos < h.size()) {
    size_t eol = h.find('\n', pos);
    std::string l = h.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    out += "  " + l + "\n";
    pos = eol == std::string::npos ? h.size() : eol + 1;
  }
  return out;
}

std::string FormatPolicyShow(const v1::PolicyShowResponse& resp) {
  const auto& c = resp.current();
  std::string out;
  if (c.version().empty()) {
    out = "No policy pushed: every node runs its own files (ingress section of its mx.yaml).\n";
  } else {
    out = "Current: " + c.version() + ", applied " + QTime(c.applied_unix_us()) + " UTC by " + c.applied_by() + "\n";
    std::vector<std::string> files;
    for (const auto& [path, _] : c.files()) files.push_back(path);
    std::sort(files.begin(), files.end());
    out += "Files:  ";
    for (const auto& f : files) out += " " + f;
    out += files.empty() ? " (none)\n" : "\n";
  }
  out += Pad("node", 14, false) + Pad("policy", 18, false) + "state\n";
  for (const auto& n : resp.nodes()) {
    if (n.policy_version().empty()) continue;  // runs no policy (queue or delivery only)
    std::string state = n.policy_version() == c.version() || c.version().empty() ? "current" : "behind";
    if (!n.policy_error().empty()) state = "refused " + c.version() + ": " + n.policy_error();
    out += Pad(n.name(), 14, false) + Pad(n.policy_version(), 18, false) + state + "\n";
  }
  return out;
}

}  // namespace mx::control
