// TCP transport over io_uring: control frames and kPages frames on one stream. Pages are sent
// by SENDMSG_ZC straight from guest memory when the kernel's io_uring has it (else SENDMSG),
// many contiguous-page runs per system call; the receiver reads them straight into guest memory.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "include/lmig/transport.h"

namespace lmig {

absl::StatusOr<std::unique_ptr<Transport>> TcpConnect(const std::string& host, uint16_t port,
                                                      const TransportOptions& opts);
absl::StatusOr<std::unique_ptr<Listener>> TcpListen(const std::string& addr, uint16_t port,
                                                    const TransportOptions& opts);

}  // namespace lmig
