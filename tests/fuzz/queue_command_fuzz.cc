// queue_command_fuzz.cc — libFuzzer target: a replicated log entry as the
// queue decodes it (a v1::QueueEntry in protobuf wire format) applied to a
// real StateMachine over RocksDB. Entries come from the Raft log, which a
// corrupt disk or a bug elsewhere can fill with anything: a bad command must
// be refused (a Status), never crash a replica.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "mx/v1/queue.pb.h"
#include "state_machine.h"

namespace {

// One state machine for the whole run, in a directory removed at exit.
struct Fixture {
  Fixture() : dir((std::filesystem::temp_directory_path() / ("mx-fuzz-queue-" + std::to_string(getpid()))).string()) {
    // Invalid UTF-8 in string fields is logged per input; a replica refuses
    // such an entry the same way, the fuzzer need not print it.
    google::protobuf::SetLogHandler(nullptr);
    std::filesystem::remove_all(dir);
    mx::queue::StateMachineOptions o;
    o.dir = dir;
    auto r = mx::queue::StateMachine::Open(o);
    if (!r.ok()) __builtin_trap();
    sm = std::move(r).value();
    index = sm->applied_index();
  }
  ~Fixture() {
    sm.reset();
    std::filesystem::remove_all(dir);
  }
  std::string dir;
  std::unique_ptr<mx::queue::StateMachine> sm;
  uint64_t index = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture f;
  mx::v1::QueueEntry entry;
  if (!entry.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<const mx::v1::QueueCommand*> commands;
  for (const auto& c : entry.commands()) commands.push_back(&c);
  std::vector<mx::queue::ApplyResult> results;
  (void)f.sm->Apply(++f.index, commands, &results);
  return 0;
}
