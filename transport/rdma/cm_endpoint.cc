#include "transport/rdma/cm_endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig::rdma {
namespace {

constexpr int kResolveTimeoutMs = 5000;
constexpr int kListenBacklog = 8;
constexpr int kReactorEntries = 64;

absl::StatusOr<sockaddr_in> ResolveIpv4(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  addrinfo* res = nullptr;
  const int err = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
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

// Waits for FD to become readable, or TIMEOUT, on REACTOR. Returns false on timeout.
absl::StatusOr<bool> WaitReadable(Reactor* reactor, int fd, absl::Duration timeout) {
  struct State {
    bool ready = false;
    bool timed_out = false;
  };
  auto st = std::make_shared<State>();
  reactor->PollIn(fd, [st](int, uint32_t) { st->ready = true; });
  if (timeout != absl::InfiniteDuration()) {
    reactor->Timeout(timeout, [st](int, uint32_t) { st->timed_out = true; });
  }
  RETURN_IF_ERROR(reactor->RunUntil([&] { return st->ready || st->timed_out; }));
  return st->ready;
}

// Waits for EXPECTED on EP's channel.
absl::StatusOr<rdma_cm_id*> WaitCmEventOn(CmEndpoint& ep, rdma_cm_event_type expected,
                                          absl::Duration timeout) {
  return WaitCmEvent(ep.reactor.get(), ep.channel.get(), expected, timeout, ep.name);
}

// A fresh id on a fresh non-blocking event channel, and a reactor to wait on it.
absl::StatusOr<CmEndpoint> NewEndpoint(std::string name) {
  CmEndpoint ep;
  ep.name = std::move(name);
  ASSIGN_OR_RETURN(ep.channel, CreateEventChannel());
  RETURN_IF_ERROR(MakeNonBlocking(ep.channel->fd));
  ASSIGN_OR_RETURN(ep.id, CreateId(ep.channel.get()));
  ASSIGN_OR_RETURN(ep.reactor, Reactor::Create(kReactorEntries));
  return ep;
}

}  // namespace

absl::Status MakeNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoStatus("fcntl O_NONBLOCK");
  }
  return absl::OkStatus();
}

absl::StatusOr<rdma_cm_id*> WaitCmEvent(Reactor* reactor, rdma_event_channel* ch,
                                        rdma_cm_event_type expected, absl::Duration timeout,
                                        const std::string& where) {
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(ch, &ev) == 0) {
      const rdma_cm_event_type type = ev->event;
      const int status = ev->status;
      rdma_cm_id* id = ev->id;
      rdma_ack_cm_event(ev);
      if (type == expected) {
        return id;
      }
      std::string hint;
      if (type == RDMA_CM_EVENT_REJECTED) {
        hint = " (is an lmig-rdma dst --transport rdma listening there?)";
      }
      return absl::UnavailableError(absl::StrFormat(
          "RDMA connection to %s: got %s (status %d) while waiting for %s%s", where,
          rdma_event_str(type), status, rdma_event_str(expected), hint));
    }
    if (errno != EAGAIN) {
      return ErrnoStatus("rdma_get_cm_event");
    }
    ASSIGN_OR_RETURN(bool ready, WaitReadable(reactor, ch->fd, timeout));
    if (!ready) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "RDMA connection to %s: no %s within %d s", where, rdma_event_str(expected),
          absl::ToInt64Seconds(timeout)));
    }
  }
}

absl::StatusOr<CmEndpoint> ResolvePeer(const std::string& host, uint16_t port,
                                       absl::Duration timeout) {
  const std::string where = absl::StrFormat("%s:%d", host, port);
  ASSIGN_OR_RETURN(sockaddr_in sa, ResolveIpv4(host, port));
  ASSIGN_OR_RETURN(CmEndpoint ep, NewEndpoint(where));
  if (rdma_resolve_addr(ep.id.get(), nullptr, reinterpret_cast<sockaddr*>(&sa),
                        kResolveTimeoutMs) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_resolve_addr ", where));
  }
  RETURN_IF_ERROR(WaitCmEventOn(ep, RDMA_CM_EVENT_ADDR_RESOLVED, timeout).status());
  if (rdma_resolve_route(ep.id.get(), kResolveTimeoutMs) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_resolve_route ", where));
  }
  RETURN_IF_ERROR(WaitCmEventOn(ep, RDMA_CM_EVENT_ROUTE_RESOLVED, timeout).status());
  return ep;
}

absl::StatusOr<CmEndpoint> ListenOn(const std::string& addr, uint16_t port) {
  const std::string where = absl::StrFormat("%s:%d", addr, port);
  ASSIGN_OR_RETURN(sockaddr_in sa, ResolveIpv4(addr, port));
  ASSIGN_OR_RETURN(CmEndpoint ep, NewEndpoint(where));
  if (rdma_bind_addr(ep.id.get(), reinterpret_cast<sockaddr*>(&sa)) != 0) {
    return ErrnoStatus(absl::StrCat("cannot listen for RDMA on ", where,
                                    " (no RDMA device with that address?)"));
  }
  if (rdma_listen(ep.id.get(), kListenBacklog) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_listen ", where));
  }
  return ep;
}

absl::StatusOr<CmEndpoint> NextConnectRequest(CmEndpoint& listening, absl::Time deadline) {
  const absl::Duration wait = deadline == absl::InfiniteFuture()
                                  ? absl::InfiniteDuration()
                                  : std::max(absl::ZeroDuration(), deadline - absl::Now());
  ASSIGN_OR_RETURN(rdma_cm_id * child,
                   WaitCmEventOn(listening, RDMA_CM_EVENT_CONNECT_REQUEST, wait));
  CmEndpoint ep;
  ep.id = CmId(child);
  ASSIGN_OR_RETURN(ep.channel, CreateEventChannel());
  if (rdma_migrate_id(child, ep.channel.get()) != 0) {
    return ErrnoStatus("rdma_migrate_id");
  }
  RETURN_IF_ERROR(MakeNonBlocking(ep.channel->fd));
  ASSIGN_OR_RETURN(ep.reactor, Reactor::Create(kReactorEntries));
  char ip[INET_ADDRSTRLEN] = "?";
  const auto* peer = reinterpret_cast<const sockaddr_in*>(rdma_get_peer_addr(child));
  ::inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof(ip));
  ep.name = absl::StrFormat("%s:%d", ip, ntohs(peer->sin_port));
  return ep;
}

}  // namespace lmig::rdma
