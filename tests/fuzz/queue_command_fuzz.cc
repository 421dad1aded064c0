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

#include "mx/queue/state_machine.h"
#include "mx/v1/queue.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<mx::queue::StateMachine> sm = [] {
    const std::string dir =
        (std::filesystem::temp_directory_path() / ("mx-fuzz-queue-" + std::to_string(getpid()))).string();
    std::filesystem::remove_all(dir);
    mx::queue::StateMachineOptions o;
    o.dir = dir;
    auto r = mx::queue::StateMachine::Open(o);
    if (!r.ok()) __builtin_trap();
    return std::move(r).value();
  }();
  static uint64_t index = sm->applied_index();
  mx::v1::QueueEntry entry;
  if (!entry.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<const mx::v1::QueueCommand*> commands;
  for (const auto& c : entry.commands()) commands.push_back(&c);
  std::vector<mx::queue::ApplyResult> results;
  (void)sm->Apply(++index, commands, &results);
  return 0;
}
