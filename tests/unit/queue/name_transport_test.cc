// name_transport_test.cc — the Raft transport wrapper over libraft's TCP transport.
#include "name_transport.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <string>

#include "loopback.h"

namespace mx::queue::raft {
namespace {

// TCP_NODELAY of a stream libraft's transport handed over; -1 if unreadable.
int NoDelayOf(uv_stream_s* stream) {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(stream), &fd) != 0) return -1;
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) != 0) return -1;
  return v;
}

std::string FreeLoopbackAddress() {
  return "127.0.0.1:" + std::to_string(FreePort());
}

struct Seen {
  int accepted = -1, connected = -1;  // TCP_NODELAY of each end
  uv_stream_s* streams[2] = {nullptr, nullptr};
  int closed = 0;
};

void CloseStream(uv_stream_s* s) {
  if (s) uv_close(reinterpret_cast<uv_handle_t*>(s), [](uv_handle_t* h) { raft_free(h); });
}

// libraft's TCP transport leaves Nagle's algorithm on; every Raft connection,
// made or accepted, must have it off (an entry written while an earlier one
// is unacknowledged would wait for the peer's delayed ACK).
TEST(NameTransport, RaftConnectionsMadeAndAcceptedAreNoDelay) {
  uv_loop_t loop;
  ASSERT_EQ(uv_loop_init(&loop), 0);
  const std::string server_address = FreeLoopbackAddress(), client_address = FreeLoopbackAddress();
  NameTransport server, client;
  ASSERT_EQ(server.Init(&loop, server_address), 0);
  ASSERT_EQ(client.Init(&loop, client_address), 0);
  Seen seen;
  raft_uv_transport* st = server.transport();
  st->data = &seen;
  ASSERT_EQ(st->init(st, 1, server_address.c_str()), 0);
  ASSERT_EQ(st->listen(st,
                       [](raft_uv_transport* t, raft_id, const char*, uv_stream_s* stream) {
                         auto* s = static_cast<Seen*>(t->data);
                         s->accepted = NoDelayOf(stream);
                         s->streams[0] = stream;
                       }),
            0);
  raft_uv_transport* ct = client.transport();
  ASSERT_EQ(ct->init(ct, 2, client_address.c_str()), 0);
  raft_uv_connect req{};
  req.data = &seen;
  ASSERT_EQ(ct->connect(ct, &req, 1, server_address.c_str(),
                        [](raft_uv_connect* r, uv_stream_s* stream, int status) {
                          auto* s = static_cast<Seen*>(r->data);
                          s->connected = status == 0 ? NoDelayOf(stream) : -2;
                          s->streams[1] = stream;
                        }),
            0);
  uv_timer_t deadline;
  uv_timer_init(&loop, &deadline);
  bool expired = false;
  deadline.data = &expired;
  uv_timer_start(
      &deadline, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, 10000, 0);
  while ((seen.accepted < 0 || seen.connected < 0) && !expired) uv_run(&loop, UV_RUN_ONCE);
  EXPECT_EQ(seen.connected, 1) << "the connecting end (libraft sends entries and append results on it)";
  EXPECT_EQ(seen.accepted, 1) << "the accepting end";

  CloseStream(seen.streams[0]);
  CloseStream(seen.streams[1]);
  uv_close(reinterpret_cast<uv_handle_t*>(&deadline), nullptr);
  st->data = &seen;
  ct->data = &seen;
  auto closed = [](raft_uv_transport* t) { ++static_cast<Seen*>(t->data)->closed; };
  st->close(st, closed);
  ct->close(ct, closed);
  while (seen.closed < 2) uv_run(&loop, UV_RUN_ONCE);
  server.Release();
  client.Release();
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace mx::queue::raft
