// mxctl — the operator's tool: mailq and mailstats against the control plane.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mx/common/grpc_server.h"
#include "mx/control/format.h"
#include "mx/v1/control.grpc.pb.h"

namespace {

int Usage() {
  fprintf(stderr,
          "usage: mxctl [--server host:port] [-o text|json] COMMAND [options]\n"
          "commands:\n"
          "  mailq [-I qid] [-S sender] [-R recipient]   list queued messages\n"
          "  mailstats                                   per-mailer statistics\n"
          "The server defaults to $MXCTL_SERVER or 127.0.0.1:7401.\n");
  return 64;  // EX_USAGE
}

int Fail(const grpc::Status& st, const std::string& server) {
  fprintf(stderr, "mxctl: %s: %s (%d)\n", server.c_str(), st.error_message().c_str(),
          static_cast<int>(st.error_code()));
  return 69;  // EX_UNAVAILABLE
}

template <typename Msg>
void PrintJson(const Msg& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  printf("%s\n", out.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = getenv("MXCTL_SERVER");
  std::string server = env ? env : "127.0.0.1:7401";
  std::string output = "text";
  std::vector<std::string> args(argv + 1, argv + argc);
  size_t i = 0;
  for (; i < args.size(); ++i) {
    if (args[i] == "--server" && i + 1 < args.size())
      server = args[++i];
    else if (args[i] == "-o" && i + 1 < args.size())
      output = args[++i];
    else
      break;
  }
  if (i >= args.size() || (output != "text" && output != "json")) return Usage();
  std::string cmd = args[i++];
  auto stub = mx::v1::Admin::NewStub(mx::MakeChannel(server));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));

  if (cmd == "mailq") {
    mx::v1::MailqRequest req;
    for (; i < args.size(); ++i) {
      const std::string& a = args[i];
      auto value = [&](size_t skip) {
        return a.size() > skip ? a.substr(skip) : (i + 1 < args.size() ? args[++i] : "");
      };
      if (a.rfind("-I", 0) == 0 || a.rfind("-qI", 0) == 0)
        req.set_qid(value(a[1] == 'q' ? 3 : 2));
      else if (a.rfind("-S", 0) == 0 || a.rfind("-qS", 0) == 0)
        req.set_sender(value(a[1] == 'q' ? 3 : 2));
      else if (a.rfind("-R", 0) == 0 || a.rfind("-qR", 0) == 0)
        req.set_recipient(value(a[1] == 'q' ? 3 : 2));
      else
        return Usage();
    }
    mx::v1::MailqResponse resp;
    auto st = stub->Mailq(&ctx, req, &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatMailq(resp).c_str(), stdout);
    return 0;
  }
  if (cmd == "mailstats") {
    if (i != args.size()) return Usage();
    mx::v1::MailstatsResponse resp;
    auto st = stub->Mailstats(&ctx, mx::v1::MailstatsRequest(), &resp);
    if (!st.ok()) return Fail(st, server);
    if (output == "json")
      PrintJson(resp);
    else
      fputs(mx::control::FormatMailstats(resp).c_str(), stdout);
    return 0;
  }
  return Usage();
}
