// name_transport.h — a Raft transport that accepts host names.
//
// libraft 0.15's TCP transport takes only IPv4 literals ("10.0.0.1:7500").
// In Kubernetes a queue replica's stable identity is its DNS name
// (mx-queue-0.mx-queue-peers.mail.svc.cluster.local) while its pod IP changes
// at every restart, so the Raft configuration keeps names and this transport
// resolves them at every connect, on libuv's thread pool, before handing the
// address to the TCP transport. Literal IPv4 addresses go straight through.
#pragma once

#include <uv.h>
extern "C" {
#include <raft.h>
#include <raft/uv.h>
}

#include <string>

namespace mx::queue::raft {

class NameTransport {
 public:
  NameTransport() = default;
  NameTransport(const NameTransport&) = delete;
  NameTransport& operator=(const NameTransport&) = delete;

  // Initialises the TCP transport underneath; 0 or a RAFT_* error.
  int Init(uv_loop_t* loop, const std::string& bind_address);
  // What raft_uv_init takes. Valid after Init.
  raft_uv_transport* transport() { return &outer_; }
  // After raft_close has completed.
  void Release();

 private:
  struct Lookup;
  static int OnInit(raft_uv_transport* t, raft_id id, const char* address);
  static int OnListen(raft_uv_transport* t, raft_uv_accept_cb cb);
  static int OnConnect(raft_uv_transport* t, raft_uv_connect* req, raft_id id, const char* address,
                       raft_uv_connect_cb cb);
  static void OnClose(raft_uv_transport* t, raft_uv_transport_close_cb cb);
  static void OnAccepted(raft_uv_transport* tcp, raft_id id, const char* address, uv_stream_s* stream);
  static void OnResolved(uv_getaddrinfo_t* req, int status, addrinfo* res);
  static void OnTcpClosed(raft_uv_transport* tcp);
  void MaybeClosed();

  raft_uv_transport outer_{};  // what libraft's uv I/O sees
  raft_uv_transport tcp_{};    // libraft's TCP transport
  uv_loop_t* loop_ = nullptr;
  Lookup* lookups_ = nullptr;  // in flight, linked
  bool tcp_ready_ = false, closing_ = false, tcp_closed_ = false;
  raft_uv_transport_close_cb close_cb_ = nullptr;
  raft_uv_accept_cb accept_cb_ = nullptr;  // libraft's
};

}  // namespace mx::queue::raft
