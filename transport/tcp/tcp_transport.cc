#include "transport/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/base/unique_fd.h"
#include "src/reactor/reactor.h"
#include "transport/tcp/tcp_connection.h"

namespace lmig {
namespace {

absl::StatusOr<sockaddr_in> Resolve(const std::string& host, uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const int err = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), nullptr, &hints, &res);
  if (err != 0 || res == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("cannot resolve %s: %s", host, ::gai_strerror(err)));
  }
  sockaddr_in sa;
  std::memcpy(&sa, res->ai_addr, sizeof(sa));
  ::freeaddrinfo(res);
  sa.sin_port = htons(port);
  return sa;
}

// TIMEOUT also bounds unacknowledged data (TCP_USER_TIMEOUT): over a dead link the kernel
// fails the connection that long after the last byte the peer took, however full the socket
// buffers were when the link died.
void TuneSocket(int fd, absl::Duration timeout) {
  const unsigned user_timeout_ms = static_cast<unsigned>(absl::ToInt64Milliseconds(timeout));
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const int buf = 8 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

class TcpListener : public Listener {
 public:
  TcpListener(UniqueFd sock, std::string where, const TransportOptions& opts)
      : sock_(std::move(sock)), where_(std::move(where)), opts_(opts) {}

  absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) override {
    // A connection already waiting is taken even when the deadline has passed.
    for (;;) {
      const absl::Duration left = std::max(absl::ZeroDuration(), deadline - absl::Now());
      const int ms = deadline == absl::InfiniteFuture()
                         ? -1
                         : static_cast<int>(std::min<int64_t>(
                               absl::ToInt64Milliseconds(left), 1 << 30));
      ASSIGN_OR_RETURN(const bool ready, PollOrCancel(sock_.get(), POLLIN, ms,
                                                      opts_.cancel.get(), where_));
      if (ready) {
        break;
      }
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrFormat("no connection on %s before the deadline", where_));
      }
    }
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    int fd;
    do {
      fd = ::accept4(sock_.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      return ErrnoStatus(absl::StrCat("accept on ", where_));
    }
    UniqueFd conn(fd);
    TuneSocket(fd, opts_.timeout);
    ASSIGN_OR_RETURN(auto reactor, Reactor::Create(64));
    reactor->WatchCancellation(opts_.cancel);
    char ip[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
    return NewTcpConnection(std::move(conn), std::move(reactor),
                            absl::StrFormat("%s:%d", ip, ntohs(peer.sin_port)), opts_,
                            /*server=*/true);
  }

 private:
  UniqueFd sock_;
  std::string where_;
  TransportOptions opts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> TcpConnect(const std::string& host, uint16_t port,
                                                      const TransportOptions& opts) {
  const std::string where = absl::StrFormat("%s:%d", host, port);
  ASSIGN_OR_RETURN(sockaddr_in sa, Resolve(host, port, false));
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock.valid()) {
    return ErrnoStatus("socket");
  }
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
    if (errno != EINPROGRESS) {
      return ErrnoStatus(absl::StrCat("cannot connect to ", where));
    }
    const absl::Time give_up = absl::Now() + opts.timeout;
    bool ready = false;
    while (!ready && absl::Now() < give_up) {
      ASSIGN_OR_RETURN(ready, PollOrCancel(sock.get(), POLLOUT,
                                           static_cast<int>(absl::ToInt64Milliseconds(
                                               give_up - absl::Now())) + 1,
                                           opts.cancel.get(), where));
    }
    if (!ready) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "cannot connect to %s: no answer in %d s", where, absl::ToInt64Seconds(opts.timeout)));
    }
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return ErrnoStatus(absl::StrCat("cannot connect to ", where), err);
    }
  }
  const int flags = ::fcntl(sock.get(), F_GETFL);
  ::fcntl(sock.get(), F_SETFL, flags & ~O_NONBLOCK);
  TuneSocket(sock.get(), opts.timeout);
  ASSIGN_OR_RETURN(auto reactor, Reactor::Create(64));
  reactor->WatchCancellation(opts.cancel);
  return NewTcpConnection(std::move(sock), std::move(reactor), where, opts, /*server=*/false,
                          host);
}

absl::StatusOr<std::unique_ptr<Listener>> TcpListen(const std::string& addr, uint16_t port,
                                                    const TransportOptions& opts) {
  const std::string where = absl::StrFormat("%s:%d", addr, port);
  ASSIGN_OR_RETURN(sockaddr_in sa, Resolve(addr, port, true));
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) {
    return ErrnoStatus("socket");
  }
  const int one = 1;
  ::setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
    return ErrnoStatus(absl::StrCat("cannot listen on ", where));
  }
  // A short backlog: the real source can wait there while a stranger that connected first
  // is given up on (see DestCommand).
  if (::listen(sock.get(), 8) < 0) {
    return ErrnoStatus(absl::StrCat("listen on ", where));
  }
  return std::unique_ptr<Listener>(new TcpListener(std::move(sock), where, opts));
}

}  // namespace lmig
