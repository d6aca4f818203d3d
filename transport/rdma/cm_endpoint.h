// The librdmacm side of a connection, before it has verbs resources: resolving the source's
// peer, the destination's listening id and its connection requests, and waiting for CM events
// on a non-blocking event channel through an io_uring reactor (rping.c's sequence, with the
// channel's fd polled from the event loop instead of a blocking rdma_get_cm_event).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "src/reactor/reactor.h"
#include "transport/rdma/verbs.h"

namespace lmig::rdma {

// A CM id on an event channel of its own, with the reactor that waits on the channel: what an
// RdmaConnection starts from. The id goes before its channel (member order).
struct CmEndpoint {
  std::unique_ptr<Reactor> reactor;
  EventChannel channel;
  CmId id;
  std::string name;  // for messages: the HOST:PORT asked for, or the peer's IP address
};

// Source: resolves HOST:PORT (a name or IPv4 address) to an RDMA address and route, each step
// within TIMEOUT. Errors name HOST:PORT.
absl::StatusOr<CmEndpoint> ResolvePeer(const std::string& host, uint16_t port,
                                       absl::Duration timeout);
// Destination: listens on ADDR:PORT. Error if no RDMA device has that address.
absl::StatusOr<CmEndpoint> ListenOn(const std::string& addr, uint16_t port);
// Destination: the next connection request on LISTENING, moved to an event channel and a
// reactor of its own so that it outlives the listener. DeadlineExceeded at DEADLINE
// (absl::InfiniteFuture(): waits as long as it takes).
absl::StatusOr<CmEndpoint> NextConnectRequest(CmEndpoint& listening, absl::Time deadline);

// Waits on REACTOR for the next CM event on CH (non-blocking) and checks that it is EXPECTED;
// returns the event's id (for CONNECT_REQUEST), the event acknowledged. Errors name WHERE and
// the event that came instead, or say that none came within TIMEOUT.
absl::StatusOr<rdma_cm_id*> WaitCmEvent(Reactor* reactor, rdma_event_channel* ch,
                                        rdma_cm_event_type expected, absl::Duration timeout,
                                        const std::string& where);

// Sets O_NONBLOCK on FD (an event or completion channel's).
absl::Status MakeNonBlocking(int fd);

}  // namespace lmig::rdma
