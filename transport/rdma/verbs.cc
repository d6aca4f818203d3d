#include "transport/rdma/verbs.h"

#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig::rdma {
namespace {
void Warn(const char* what, int r) {
  if (r != 0) {
    std::fprintf(stderr, "lmig-rdma: %s failed during teardown: %s\n", what,
                 std::strerror(r > 0 ? r : errno));
  }
}
}  // namespace

void EventChannelDeleter::operator()(rdma_event_channel* c) const { rdma_destroy_event_channel(c); }
void CmIdDeleter::operator()(rdma_cm_id* id) const { Warn("rdma_destroy_id", rdma_destroy_id(id)); }
void PdDeleter::operator()(ibv_pd* pd) const { Warn("ibv_dealloc_pd", ibv_dealloc_pd(pd)); }
void CompChannelDeleter::operator()(ibv_comp_channel* c) const {
  Warn("ibv_destroy_comp_channel", ibv_destroy_comp_channel(c));
}
void CqDeleter::operator()(ibv_cq* cq) const { Warn("ibv_destroy_cq", ibv_destroy_cq(cq)); }
void MrDeleter::operator()(ibv_mr* mr) const { Warn("ibv_dereg_mr", ibv_dereg_mr(mr)); }
void QpDeleter::operator()(rdma_cm_id* id) const { rdma_destroy_qp(id); }

absl::StatusOr<EventChannel> CreateEventChannel() {
  rdma_event_channel* c = rdma_create_event_channel();
  if (c == nullptr) {
    return ErrnoStatus("rdma_create_event_channel (is the rdma_ucm module loaded?)");
  }
  return EventChannel(c);
}

absl::StatusOr<CmId> CreateId(rdma_event_channel* ch) {
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(ch, &id, nullptr, RDMA_PS_TCP) != 0) {
    return ErrnoStatus("rdma_create_id");
  }
  return CmId(id);
}

absl::StatusOr<Pd> AllocPd(ibv_context* ctx) {
  ibv_pd* pd = ibv_alloc_pd(ctx);
  if (pd == nullptr) {
    return ErrnoStatus(absl::StrCat("ibv_alloc_pd on ", ibv_get_device_name(ctx->device)));
  }
  return Pd(pd);
}

absl::StatusOr<CompChannel> CreateCompChannel(ibv_context* ctx) {
  ibv_comp_channel* c = ibv_create_comp_channel(ctx);
  if (c == nullptr) {
    return ErrnoStatus("ibv_create_comp_channel");
  }
  return CompChannel(c);
}

absl::StatusOr<Cq> CreateCq(ibv_context* ctx, int cqe, ibv_comp_channel* ch) {
  ibv_cq* cq = ibv_create_cq(ctx, cqe, nullptr, ch, 0);
  if (cq == nullptr) {
    return ErrnoStatus(absl::StrFormat("ibv_create_cq cqe=%d", cqe));
  }
  return Cq(cq);
}

absl::StatusOr<Mr> RegisterMr(ibv_pd* pd, void* addr, size_t len, int access) {
  ibv_mr* mr = ibv_reg_mr(pd, addr, len, access);
  if (mr == nullptr) {
    return ErrnoStatus(absl::StrFormat("ibv_reg_mr addr=%p len=%dMiB access=0x%x", addr,
                                       len >> 20, access));
  }
  return Mr(mr);
}

absl::StatusOr<Qp> CreateQp(rdma_cm_id* id, ibv_pd* pd, ibv_qp_init_attr* attr) {
  if (rdma_create_qp(id, pd, attr) != 0) {
    return ErrnoStatus(absl::StrFormat("rdma_create_qp send_wr=%d sge=%d", attr->cap.max_send_wr,
                                       attr->cap.max_send_sge));
  }
  return Qp(id);
}

}  // namespace lmig::rdma
