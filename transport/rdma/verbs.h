// RAII owners for librdmacm / libibverbs objects (rping.c shows the lifecycle): each is a
// unique_ptr whose deleter releases the object; teardown order is the reverse of creation.
// Failures during teardown are reported on stderr, never thrown.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lmig::rdma {

struct EventChannelDeleter {
  void operator()(rdma_event_channel* c) const;
};
struct CmIdDeleter {
  void operator()(rdma_cm_id* id) const;
};
struct PdDeleter {
  void operator()(ibv_pd* pd) const;
};
struct CompChannelDeleter {
  void operator()(ibv_comp_channel* c) const;
};
struct CqDeleter {
  void operator()(ibv_cq* cq) const;
};
struct MrDeleter {
  void operator()(ibv_mr* mr) const;
};
// Owns the QP of a CM id (rdma_create_qp / rdma_destroy_qp); the id itself is owned elsewhere.
struct QpDeleter {
  void operator()(rdma_cm_id* id) const;
};

using EventChannel = std::unique_ptr<rdma_event_channel, EventChannelDeleter>;
using CmId = std::unique_ptr<rdma_cm_id, CmIdDeleter>;
using Pd = std::unique_ptr<ibv_pd, PdDeleter>;
using CompChannel = std::unique_ptr<ibv_comp_channel, CompChannelDeleter>;
using Cq = std::unique_ptr<ibv_cq, CqDeleter>;
using Mr = std::unique_ptr<ibv_mr, MrDeleter>;
using Qp = std::unique_ptr<rdma_cm_id, QpDeleter>;

absl::StatusOr<EventChannel> CreateEventChannel();
absl::StatusOr<CmId> CreateId(rdma_event_channel* ch);
absl::StatusOr<Pd> AllocPd(ibv_context* ctx);
absl::StatusOr<CompChannel> CreateCompChannel(ibv_context* ctx);
absl::StatusOr<Cq> CreateCq(ibv_context* ctx, int cqe, ibv_comp_channel* ch);
// Registers [ADDR, ADDR+LEN) with ACCESS; the error names the range and the access.
absl::StatusOr<Mr> RegisterMr(ibv_pd* pd, void* addr, size_t len, int access);
absl::StatusOr<Qp> CreateQp(rdma_cm_id* id, ibv_pd* pd, ibv_qp_init_attr* attr);

}  // namespace lmig::rdma
