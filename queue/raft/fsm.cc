// fsm.cc — QueueFsm: libraft FSM callbacks over the StateMachine.
#include "fsm.h"

#include <google/protobuf/arena.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "mx/common/log.h"

namespace mx::queue::raft {

namespace fs = std::filesystem;

QueueFsm::QueueFsm(StateMachine& sm, Options options, SnapshotFetcher fetch)
    : sm_(sm), options_(std::move(options)), fetch_(std::move(fetch)) {
  // Version 3: the checkpoint is taken by snapshot_async on libuv's thread
  // pool, so its memtable flush and fsyncs do not stall the Raft loop.
  fsm_.version = 3;
  fsm_.data = this;
  fsm_.apply = &QueueFsm::Apply;
  fsm_.restore = &QueueFsm::Restore;
  fsm_.snapshot_finalize = &QueueFsm::SnapshotFinalize;
  UseAsyncSnapshots(true);
}

void QueueFsm::UseAsyncSnapshots(bool on) {
  fsm_.snapshot = on ? &QueueFsm::Snapshot : &QueueFsm::SnapshotSync;
  fsm_.snapshot_async = on ? &QueueFsm::SnapshotAsync : nullptr;
}

namespace {

// libraft's on-disk log pads entries to 8 bytes and a payload whose length is
// not a multiple of 8 corrupts the segment (seen as "non-zero trail" and lost
// entries on restart). Payloads are therefore framed: an 8-byte little-endian
// length, the protobuf, zero padding to a multiple of 8.
raft_buffer Frame(const google::protobuf::MessageLite& m) {
  const size_t n = m.ByteSizeLong();
  raft_buffer buf;
  buf.len = (8 + n + 7) & ~size_t{7};
  buf.base = raft_malloc(buf.len);
  if (!buf.base) return buf;
  auto* p = static_cast<uint8_t*>(buf.base);
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(static_cast<uint64_t>(n) >> (8 * i));
  m.SerializeWithCachedSizesToArray(p + 8);
  std::memset(p + 8 + n, 0, buf.len - 8 - n);
  return buf;
}

bool Unframe(const raft_buffer& buf, google::protobuf::MessageLite* m) {
  if (buf.len < 8) return false;
  const auto* p = static_cast<const uint8_t*>(buf.base);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(p[i]) << (8 * i);
  if (n > buf.len - 8) return false;
  return m->ParseFromArray(p + 8, static_cast<int>(n));
}

}  // namespace

raft_buffer QueueFsm::Encode(const v1::QueueEntry& entry) {
  return Frame(entry);
}

int QueueFsm::Apply(raft_fsm* fsm, const raft_buffer* buf, void** result) {
  auto* self = static_cast<QueueFsm*>(fsm->data);
  *result = nullptr;
  const uint64_t index = self->raft_->last_applied + 1;
  // The entry's commands (message bodies included) live on an arena: one
  // allocation per block instead of one per field, all freed at once.
  google::protobuf::ArenaOptions arena_options;
  arena_options.start_block_size = std::max<size_t>(4096, buf->len + buf->len / 4);
  arena_options.max_block_size = std::max<size_t>(arena_options.start_block_size, 1 << 20);
  google::protobuf::Arena arena(arena_options);
  auto& entry = *google::protobuf::Arena::CreateMessage<v1::QueueEntry>(&arena);
  if (!Unframe(*buf, &entry)) {
    // libraft checksums entries, so this is a bug, not disk corruption:
    // skipping keeps every replica identical (all skip it).
    log::Error("shard " + std::to_string(self->options_.shard) + ": undecodable log entry " + std::to_string(index) +
               " skipped");
    return 0;
  }
  std::vector<const v1::QueueCommand*> cmds;
  cmds.reserve(entry.commands_size());
  for (const auto& c : entry.commands()) cmds.push_back(&c);
  std::vector<ApplyResult>* results = self->result_sink ? self->result_sink(index) : nullptr;
  if (!results) results = &self->scratch_;
  Status st = self->sm_.Apply(index, cmds, results);
  // A storage failure (the disk is full) writes nothing. The entry is
  // committed, so it must apply before any later one: retry it here, once a
  // second, until the store takes it (space came back) or the log stops (the
  // entry is replayed from the Raft log at the next start). The shard makes
  // no progress meanwhile: Enqueues time out and are answered 451, never 250.
  for (int attempt = 1; !st.ok(); ++attempt) {
    if (attempt == 1 || attempt % 60 == 0) {
      log::Error("shard " + std::to_string(self->options_.shard) + ": apply of entry " + std::to_string(index) +
                 " failed (attempt " + std::to_string(attempt) + "), retrying every second: " + st.ToString());
    }
    for (int i = 0; i < 10 && !self->stopping.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (self->stopping.load()) return RAFT_IOERR;
    st = self->sm_.Apply(index, cmds, results);
    if (st.ok()) {
      log::Info("shard " + std::to_string(self->options_.shard) + ": entry " + std::to_string(index) +
                " applied after " + std::to_string(attempt) + " retries");
    }
  }
  return 0;
}

// Loop thread: notes the index libraft snapshots at; SnapshotAsync does the work.
int QueueFsm::Snapshot(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs) {
  auto* self = static_cast<QueueFsm*>(fsm->data);
  self->snapshot_index_ = self->sm_.applied_index();
  *bufs = nullptr;
  *n_bufs = 0;
  return 0;
}

int QueueFsm::SnapshotSync(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs) {
  Snapshot(fsm, bufs, n_bufs);
  return SnapshotAsync(fsm, bufs, n_bufs);
}

// Thread pool, while the loop goes on applying entries: the checkpoint may
// therefore hold state past the snapshot's index, which is harmless (the
// applied index is in the store; entries at or below it are skipped when the
// log after the snapshot is replayed on it).
int QueueFsm::SnapshotAsync(raft_fsm* fsm, raft_buffer* bufs[], unsigned* n_bufs) {
  auto* self = static_cast<QueueFsm*>(fsm->data);
  const uint64_t index = self->snapshot_index_;
  const fs::path dir = fs::path(self->options_.snapshot_dir) / std::to_string(index);
  std::error_code ec;
  fs::create_directories(self->options_.snapshot_dir, ec);
  fs::remove_all(dir, ec);
  auto files = self->sm_.CreateCheckpoint(dir.string());
  if (!files.ok()) {
    log::Error("shard " + std::to_string(self->options_.shard) + ": snapshot failed: " + files.status().ToString());
    return RAFT_IOERR;
  }
  v1::SnapshotManifest m;
  m.set_shard(self->options_.shard);
  m.set_index(index);
  m.set_source_node_id(self->options_.node_id);
  m.set_source_address(self->options_.grpc_address);
  for (const auto& [name, size] : *files) {
    auto* f = m.add_files();
    f->set_name(name);
    f->set_size(size);
  }
  auto* arr = static_cast<raft_buffer*>(raft_malloc(sizeof(raft_buffer)));
  if (!arr) return RAFT_NOMEM;
  arr[0] = Frame(m);
  if (!arr[0].base) {
    raft_free(arr);
    return RAFT_NOMEM;
  }
  *bufs = arr;
  *n_bufs = 1;
  self->last_snapshot_index_ = index;
  self->PruneSnapshots(index);
  log::Info("shard " + std::to_string(self->options_.shard) + ": snapshot at index " + std::to_string(index) + " (" +
            std::to_string(files->size()) + " checkpoint files)");
  return 0;
}

// Loop thread, after the manifest was written (or the snapshot failed): with
// version >= 2 the buffers are ours to free.
int QueueFsm::SnapshotFinalize(raft_fsm*, raft_buffer* bufs[], unsigned* n_bufs) {
  if (*bufs) {
    for (unsigned i = 0; i < *n_bufs; ++i) raft_free((*bufs)[i].base);
    raft_free(*bufs);
  }
  *bufs = nullptr;
  *n_bufs = 0;
  return 0;
}

void QueueFsm::PruneSnapshots(uint64_t newest) {
  std::vector<uint64_t> indexes;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(options_.snapshot_dir, ec)) {
    const auto name = e.path().filename().string();
    if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos)
      indexes.push_back(std::stoull(name));
  }
  std::sort(indexes.rbegin(), indexes.rend());
  for (size_t i = 0; i < indexes.size(); ++i) {
    if (i >= options_.keep_snapshots && indexes[i] < newest) {
      fs::remove_all(fs::path(options_.snapshot_dir) / std::to_string(indexes[i]), ec);
    }
  }
}

int QueueFsm::Restore(raft_fsm* fsm, raft_buffer* buf) {
  auto* self = static_cast<QueueFsm*>(fsm->data);
  const std::string shard = "shard " + std::to_string(self->options_.shard);
  v1::SnapshotManifest m;
  if (!Unframe(*buf, &m)) {
    log::Error(shard + ": undecodable snapshot manifest");
    return RAFT_MALFORMED;
  }
  // Our own snapshot at startup, or a replica already this far along: the
  // store already holds this state (and maybe more, which the log replay skips).
  if (self->sm_.applied_index() >= m.index()) {
    self->last_snapshot_index_ = std::max(self->last_snapshot_index_.load(), m.index());
    raft_free(buf->base);
    return 0;
  }
  log::Info(shard + ": installing snapshot " + std::to_string(m.index()) + " from node " +
            std::to_string(m.source_node_id()) + " (" + m.source_address() + "), local applied index " +
            std::to_string(self->sm_.applied_index()));
  const fs::path incoming = fs::path(self->options_.snapshot_dir) / ("incoming-" + std::to_string(m.index()));
  std::error_code ec;
  fs::remove_all(incoming, ec);
  fs::create_directories(incoming, ec);
  if (ec) {
    log::Error(shard + ": cannot create " + incoming.string() + ": " + ec.message());
    return RAFT_IOERR;
  }
  Status st = self->fetch_ ? self->fetch_(m, incoming.string())
                           : Status(Code::kUnimplemented, "no snapshot fetcher configured");
  if (st.ok()) {
    for (const auto& f : m.files()) {
      auto size = fs::file_size(incoming / f.name(), ec);
      if (ec || size != f.size()) {
        st = Status(Code::kDataLoss, "snapshot file " + f.name() + " has the wrong size");
        break;
      }
    }
  }
  if (st.ok()) st = self->sm_.ReplaceFrom(incoming.string());
  if (!st.ok()) {
    log::Error(shard + ": snapshot install failed (the leader retries): " + st.ToString());
    fs::remove_all(incoming, ec);
    return RAFT_IOERR;
  }
  self->last_snapshot_index_ = m.index();
  ++self->installs_;
  log::Info(shard + ": installed snapshot " + std::to_string(m.index()));
  raft_free(buf->base);
  return 0;
}

}  // namespace mx::queue::raft
