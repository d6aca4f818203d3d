// RDMA transport (RC queue pair over librdmacm; any verbs device: rxe in the lab, RoCE or
// InfiniBand NICs elsewhere).
//
// Data path: the source's guest memory is registered for local access, the destination's for
// remote write, both in chunks no larger than the device's max_mr_size. Runs of dirty pages
// become RDMA WRITE work requests (scatter-gather lists up to max_sge, at most
// max_write_bytes each) written straight into the destination's guest memory: no copy, no
// receive-side CPU work per page. The send queue is kept full with selective signalling.
//
// Control path: the protocol's frames travel as a byte stream in SEND/RECV chunks on the same
// QP. RC ordering makes every WRITE posted before a SEND land before the SEND is delivered, so
// the destination never reads an END_ROUND or the device state before the memory it follows.
//
// Completions: the CQ's completion channel fd and the CM event channel fd are polled by the
// transport's io_uring reactor (or the CQ is busy-polled with TransportOptions::busy_poll).
//
// The pieces: cm_endpoint.h (resolving, listening, CM events), rdma_connection.h (the verbs
// resources, the setup tail shared by connect and accept, send-queue accounting, waiting),
// control_stream.h (frames over SEND/RECV), write_planner.h (ranges to WRITEs and SGEs, a pure
// function), rdma_transport.cc (the Transport that ties them together, and the Listener).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "include/lmig/transport.h"

namespace lmig {

absl::StatusOr<std::unique_ptr<Transport>> RdmaConnect(const std::string& host, uint16_t port,
                                                       const TransportOptions& opts);
absl::StatusOr<std::unique_ptr<Listener>> RdmaListen(const std::string& addr, uint16_t port,
                                                     const TransportOptions& opts);

}  // namespace lmig
