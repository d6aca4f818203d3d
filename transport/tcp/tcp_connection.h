// One TCP migration connection over io_uring (transport/tcp/tcp_transport.h has the whole
// transport): control frames and kPages frames on one stream, TLS under it when configured.
#pragma once

#include <memory>
#include <string>

#include "include/lmig/transport.h"
#include "src/base/unique_fd.h"
#include "src/reactor/reactor.h"

namespace lmig {

// The Transport for a connected socket SOCK, driven by REACTOR. SERVER: the accepting side
// (the TLS server); PEER: the other end in messages; PEER_HOST: the name dialled (checked
// against the destination's TLS certificate).
std::unique_ptr<Transport> NewTcpConnection(UniqueFd sock, std::unique_ptr<Reactor> reactor,
                                            std::string peer, const TransportOptions& opts,
                                            bool server, std::string peer_host = "");

}  // namespace lmig
