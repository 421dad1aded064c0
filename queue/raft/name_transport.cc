// name_transport.cc — NameTransport: host names resolved at each Raft connect.
#include "name_transport.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <cstring>
#include <mutex>
#include <unordered_map>

namespace mx::queue::raft {
namespace {

// libraft's TCP transport leaves Nagle's algorithm on: an entry or an append
// result written while an earlier one is unacknowledged waited for the
// peer's (delayed) ACK, which put 5 ms on every commit as soon as two
// entries were in flight. Every Raft connection is made TCP_NODELAY here.
void NoDelay(uv_stream_s* stream) {
  if (stream != nullptr && stream->type == UV_TCP) uv_tcp_nodelay(reinterpret_cast<uv_tcp_t*>(stream), 1);
}

// libraft's callback for each connect in flight (libraft owns req->data).
std::mutex connects_mu;
std::unordered_map<raft_uv_connect*, raft_uv_connect_cb>& Connects() {
  static auto* connects = new std::unordered_map<raft_uv_connect*, raft_uv_connect_cb>;
  return *connects;
}

void OnConnected(raft_uv_connect* req, uv_stream_s* stream, int status) {
  raft_uv_connect_cb cb = nullptr;
  {
    std::lock_guard lock(connects_mu);
    auto it = Connects().find(req);
    if (it == Connects().end()) return;
    cb = it->second;
    Connects().erase(it);
  }
  if (status == 0) NoDelay(stream);
  cb(req, stream, status);
}

// tcp.connect with OnConnected in front of cb.
int ConnectNoDelay(raft_uv_transport* tcp, raft_uv_connect* req, raft_id id, const char* address,
                   raft_uv_connect_cb cb) {
  {
    std::lock_guard lock(connects_mu);
    Connects()[req] = cb;
  }
  int rv = tcp->connect(tcp, req, id, address, &OnConnected);
  if (rv != 0) {
    std::lock_guard lock(connects_mu);
    Connects().erase(req);
  }
  return rv;
}

}  // namespace

// One connect waiting for its name lookup.
struct NameTransport::Lookup {
  uv_getaddrinfo_t req{};
  NameTransport* self = nullptr;
  raft_uv_connect* connect = nullptr;
  raft_uv_connect_cb cb = nullptr;
  raft_id id = 0;
  std::string port;
  Lookup* next = nullptr;
};

int NameTransport::Init(uv_loop_t* loop, const std::string& bind_address) {
  loop_ = loop;
  if (int rv = raft_uv_tcp_init(&tcp_, loop); rv != 0) return rv;
  tcp_ready_ = true;
  if (int rv = raft_uv_tcp_set_bind_address(&tcp_, bind_address.c_str()); rv != 0) return rv;
  outer_.impl = this;
  outer_.init = &NameTransport::OnInit;
  outer_.listen = &NameTransport::OnListen;
  outer_.connect = &NameTransport::OnConnect;
  outer_.close = &NameTransport::OnClose;
  return 0;
}

void NameTransport::Release() {
  if (tcp_ready_) raft_uv_tcp_close(&tcp_);
  tcp_ready_ = false;
}

int NameTransport::OnInit(raft_uv_transport* t, raft_id id, const char* address) {
  auto* self = static_cast<NameTransport*>(t->impl);
  // The TCP transport only keeps its own address (sent in handshakes); it
  // listens on the bind address, which is an IP.
  int rv = self->tcp_.init(&self->tcp_, id, address);
  if (rv != 0) memcpy(t->errmsg, self->tcp_.errmsg, sizeof t->errmsg);
  return rv;
}

int NameTransport::OnListen(raft_uv_transport* t, raft_uv_accept_cb cb) {
  auto* self = static_cast<NameTransport*>(t->impl);
  // The accept callback finds libraft's I/O through transport->data.
  self->tcp_.data = t->data;
  self->accept_cb_ = cb;
  int rv = self->tcp_.listen(&self->tcp_, &NameTransport::OnAccepted);
  if (rv != 0) memcpy(t->errmsg, self->tcp_.errmsg, sizeof t->errmsg);
  return rv;
}

void NameTransport::OnAccepted(raft_uv_transport* tcp, raft_id id, const char* address, uv_stream_s* stream) {
  auto* self = reinterpret_cast<NameTransport*>(reinterpret_cast<char*>(tcp) - offsetof(NameTransport, tcp_));
  NoDelay(stream);
  self->accept_cb_(tcp, id, address, stream);
}

int NameTransport::OnConnect(raft_uv_transport* t, raft_uv_connect* req, raft_id id, const char* address,
                             raft_uv_connect_cb cb) {
  auto* self = static_cast<NameTransport*>(t->impl);
  if (self->closing_) return RAFT_CANCELED;
  const std::string text = address;
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    snprintf(t->errmsg, sizeof t->errmsg, "bad Raft address '%s' (host:port)", address);
    return RAFT_NOCONNECTION;
  }
  const std::string host = text.substr(0, colon);
  in_addr ip{};
  if (inet_pton(AF_INET, host.c_str(), &ip) == 1) return ConnectNoDelay(&self->tcp_, req, id, address, cb);

  auto* lookup = new Lookup;
  lookup->self = self;
  lookup->connect = req;
  lookup->cb = cb;
  lookup->id = id;
  lookup->port = text.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_INET;  // the TCP transport speaks IPv4 only
  hints.ai_socktype = SOCK_STREAM;
  lookup->req.data = lookup;
  if (int rv = uv_getaddrinfo(self->loop_, &lookup->req, &NameTransport::OnResolved, host.c_str(), lookup->port.c_str(),
                              &hints);
      rv != 0) {
    snprintf(t->errmsg, sizeof t->errmsg, "resolve %s: %s", host.c_str(), uv_strerror(rv));
    delete lookup;
    return RAFT_NOCONNECTION;
  }
  lookup->next = self->lookups_;
  self->lookups_ = lookup;
  return 0;
}

void NameTransport::OnResolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
  auto* lookup = static_cast<Lookup*>(req->data);
  NameTransport* self = lookup->self;
  for (Lookup** p = &self->lookups_; *p; p = &(*p)->next) {
    if (*p == lookup) {
      *p = lookup->next;
      break;
    }
  }
  std::string resolved;
  if (status == 0 && res != nullptr && res->ai_family == AF_INET) {
    char ip[INET_ADDRSTRLEN];
    auto* sin = reinterpret_cast<sockaddr_in*>(res->ai_addr);
    if (inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip) != nullptr) resolved = std::string(ip) + ":" + lookup->port;
  }
  if (res != nullptr) uv_freeaddrinfo(res);
  int rv;
  if (self->closing_) {
    rv = RAFT_CANCELED;
  } else if (resolved.empty()) {
    rv = RAFT_NOCONNECTION;  // libraft retries after its connect delay
  } else {
    rv = ConnectNoDelay(&self->tcp_, lookup->connect, lookup->id, resolved.c_str(), lookup->cb);
  }
  // On success the TCP transport now owns the callback.
  if (rv != 0) lookup->cb(lookup->connect, nullptr, rv);
  delete lookup;
  if (self->closing_) self->MaybeClosed();
}

void NameTransport::OnClose(raft_uv_transport* t, raft_uv_transport_close_cb cb) {
  auto* self = static_cast<NameTransport*>(t->impl);
  self->closing_ = true;
  self->close_cb_ = cb;
  // A lookup already running on the thread pool cannot be cancelled; its
  // callback sees closing_ and reports RAFT_CANCELED.
  for (Lookup* l = self->lookups_; l; l = l->next) uv_cancel(reinterpret_cast<uv_req_t*>(&l->req));
  self->tcp_.close(&self->tcp_, &NameTransport::OnTcpClosed);
}

void NameTransport::OnTcpClosed(raft_uv_transport* tcp) {
  // tcp_ is a member: find the owner from its address.
  auto* self = reinterpret_cast<NameTransport*>(reinterpret_cast<char*>(tcp) - offsetof(NameTransport, tcp_));
  self->tcp_closed_ = true;
  self->MaybeClosed();
}

void NameTransport::MaybeClosed() {
  if (!closing_ || !tcp_closed_ || lookups_ != nullptr || close_cb_ == nullptr) return;
  auto cb = close_cb_;
  close_cb_ = nullptr;
  cb(&outer_);
}

}  // namespace mx::queue::raft
