#include "include/lmig/transport.h"

#include "transport/rdma/rdma_transport.h"
#include "transport/tcp/tcp_transport.h"

namespace lmig {

absl::StatusOr<std::unique_ptr<Transport>> ConnectTransport(proto::TransportKind kind,
                                                            const std::string& host,
                                                            uint16_t port,
                                                            const TransportOptions& opts) {
  if (kind == proto::TransportKind::kRdma) {
    return RdmaConnect(host, port, opts);
  }
  return TcpConnect(host, port, opts);
}

absl::StatusOr<std::unique_ptr<Listener>> ListenTransport(proto::TransportKind kind,
                                                          const std::string& addr,
                                                          uint16_t port,
                                                          const TransportOptions& opts) {
  if (kind == proto::TransportKind::kRdma) {
    return RdmaListen(addr, port, opts);
  }
  return TcpListen(addr, port, opts);
}

}  // namespace lmig
