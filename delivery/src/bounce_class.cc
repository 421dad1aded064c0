// bounce_class.cc — the rule table behind ClassifyReply.
#include "bounce_class.h"

#include <cctype>
#include <regex>
#include <string>
#include <vector>

namespace mx::delivery {
namespace {

struct TextRule {
  BounceClass cls;
  std::regex re;
};

// In order: the first that matches wins. Spam before everything (a block
// list reply often also says "rejected" or "unavailable"), quota and
// content before the recipient rules ("mailbox full" is not "no mailbox").
const std::vector<TextRule>& TextRules() {
  static const auto* rules = [] {
    constexpr auto kFlags = std::regex::ECMAScript | std::regex::icase | std::regex::optimize;
    auto* r = new std::vector<TextRule>;
    r->push_back({BounceClass::kSpamBlock,
                  std::regex(R"(spam|unsolicited|junk mail|bulk mail|block ?list|black ?list|blocked using|)"
                             R"(spamhaus|spamcop|barracuda|sorbs|\brbl\b|\bdnsbl\b|listed (at|on|in|by)|)"
                             R"(reputation|complaints|\[tss?0[1-9]\]|\[ipts0[1-9]\]|banned)",
                             kFlags)});
    r->push_back({BounceClass::kQuota, std::regex(R"(quota|mailbox (is )?full|insufficient (system )?storage|)"
                                                  R"(out of storage|storage (space|limit))",
                                                  kFlags)});
    r->push_back({BounceClass::kContent, std::regex(R"(virus|malware|infected|attachment|content|executable|)"
                                                    R"(message (is )?too (large|big)|exceeds? (the )?(maximum|fixed)|)"
                                                    R"(size limit|message size)",
                                                    kFlags)});
    r->push_back({BounceClass::kPolicy,
                  std::regex(R"(\bspf\b|\bdkim\b|\bdmarc\b|unauthenticated|authentication|)"
                             R"(relay(ing)? (access )?(denied|not permitted)|not permitted to relay|)"
                             R"(rate limit|too many (messages|connections|recipients)|)"
                             R"(tls (is )?required|starttls|certificate .*not trusted|mta-sts|reverse dns|\bptr\b)",
                             kFlags)});
    r->push_back({BounceClass::kBadDomain, std::regex(R"(domain (not found|does not exist|name not found)|)"
                                                      R"(host (or domain name )?not found|no mx|nxdomain|null mx|)"
                                                      R"(does not (accept|receive) mail|unroutable|unrouteable)",
                                                      kFlags)});
    r->push_back({BounceClass::kInvalidRecipient,
                  std::regex(R"(user unknown|unknown user|no such (user|mailbox|recipient|address)|does ?n.t exist|)"
                             R"(does ?n.t have an? .{0,40}account|invalid (recipient|mailbox|address|user)|)"
                             R"(recipient (address )?rejected|address rejected|mailbox (is )?unavailable|)"
                             R"(mailbox not found|not a valid mailbox|unknown (recipient|mailbox)|)"
                             R"(account (has been |is )?(disabled|inactive|suspended))",
                             kFlags)});
    r->push_back({BounceClass::kNoAnswer,
                  std::regex(R"(connection refused|timed out|timeout|connection (lost|reset|closed|dropped)|)"
                             R"(lost connection|no route to host|unreachable|could not connect|name server|)"
                             R"(dns (lookup )?(fail|error)|servfail|greeting)",
                             kFlags)});
    return r;
  }();
  return *rules;
}

// "5.1.1" from dsn_status, else from the reply ("550 5.1.1 ..."); "" if none.
std::string EnhancedCode(std::string_view reply, std::string_view dsn_status) {
  auto valid = [](std::string_view s) {
    return s.size() >= 5 && (s[0] == '2' || s[0] == '4' || s[0] == '5') && s[1] == '.' &&
           std::isdigit(static_cast<unsigned char>(s[2]));
  };
  if (valid(dsn_status)) return std::string(dsn_status);
  if (reply.size() > 4 && std::isdigit(static_cast<unsigned char>(reply[0]))) {
    std::string_view rest = reply.substr(4);
    size_t end = rest.find(' ');
    std::string_view code = rest.substr(0, end);
    if (valid(code)) return std::string(code);
  }
  return "";
}

BounceClass ByCode(const std::string& code) {
  // subject.detail after the class digit: "1.1", "7.26", ...
  const std::string sd = code.substr(2);
  const char subject = sd[0];
  auto is = [&](const char* s) { return sd == s; };
  switch (subject) {
    case '1':
      if (is("1.2") || is("1.10")) return BounceClass::kBadDomain;
      if (is("1.7") || is("1.8")) return BounceClass::kPolicy;  // the sender's address
      return BounceClass::kInvalidRecipient;
    case '2':
      if (is("2.2")) return BounceClass::kQuota;
      if (is("2.1")) return BounceClass::kInvalidRecipient;  // mailbox disabled
      if (is("2.3")) return BounceClass::kContent;           // message length
      return BounceClass::kOther;
    case '3': return is("3.4") ? BounceClass::kContent : BounceClass::kOther;
    case '4':
      if (is("4.7")) return BounceClass::kExpired;
      if (is("4.4")) return BounceClass::kBadDomain;  // unable to route
      return BounceClass::kNoAnswer;
    case '6': return BounceClass::kContent;
    case '7': return BounceClass::kPolicy;
    default: return BounceClass::kOther;
  }
}

}  // namespace

std::string_view BounceClassName(BounceClass c) {
  switch (c) {
    case BounceClass::kInvalidRecipient: return "invalid_recipient";
    case BounceClass::kBadDomain: return "bad_domain";
    case BounceClass::kSpamBlock: return "spam_block";
    case BounceClass::kContent: return "content";
    case BounceClass::kPolicy: return "policy";
    case BounceClass::kQuota: return "quota";
    case BounceClass::kNoAnswer: return "no_answer";
    case BounceClass::kExpired: return "expired";
    case BounceClass::kOther: return "other";
  }
  return "other";
}

BounceClass ClassifyReply(std::string_view reply, std::string_view dsn_status) {
  const std::string code = EnhancedCode(reply, dsn_status);
  if (code.size() >= 5 && code.substr(1) == ".4.7") return BounceClass::kExpired;  // gave up, whatever came before
  for (const auto& rule : TextRules()) {
    if (std::regex_search(reply.begin(), reply.end(), rule.re)) return rule.cls;
  }
  if (!code.empty()) return ByCode(code);
  return BounceClass::kOther;
}

}  // namespace mx::delivery
