// format.h — sendmail-style text for mxctl (mailq, mailstats, cluster status,
// policy test). Pure functions,
// golden-tested.
#pragma once

#include <string>

#include "mx/v1/control.pb.h"

namespace mx::control {

// A fan-out's missing shards (control.proto ShardFailure): "" when none,
// else one line, "partial answer: shard 1 did not answer (why); ...".
std::string FormatPartial(const google::protobuf::RepeatedPtrField<v1::ShardFailure>& failed);

std::string FormatMailq(const v1::MailqResponse& resp);
std::string FormatMailstats(const v1::MailstatsResponse& resp);
// `mxctl cluster status`: every replica of every shard, leader first.
std::string FormatClusterStatus(const v1::ClusterStatusResponse& resp);
// `mxctl hoststat`: sendmail's hoststat table.
std::string FormatHostStatus(const v1::HostStatusResponse& resp);
// mxctl sites: the sites suspended or slowed, how long is left, why.
std::string FormatSites(const v1::SitesResponse& resp);
// mxctl suppressions: address, since, class, by and reason.
std::string FormatSuppressions(const v1::SuppressionsResponse& resp);
// `mxctl policy test`: one line per step, then the outcome.
std::string FormatPolicyTest(const v1::PolicyTestResponse& resp);
// mxctl inspect: envelope, recipients with attempts and last reply, headers.
std::string FormatInspect(const v1::InspectResponse& resp);
// mxctl policy show: the current pushed version and each node's.
std::string FormatPolicyShow(const v1::PolicyShowResponse& resp);

}  // namespace mx::control
