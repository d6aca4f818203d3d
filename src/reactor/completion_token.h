// The completion token: what an io_uring SQE's user_data and a verbs work request's wr_id
// carry, so that whoever reaps a CQE (the reactor) or a work completion (an RDMA connection)
// learns from the 64 bits alone what finished and what of it. The kind rides in the top byte,
// a value (a pointer, a buffer index, a count) in the low 56 bits: x86-64 user-space addresses
// fit, even with 5-level paging (Documentation/arch/x86/x86_64/mm.rst: user space ends below
// 2^56).
#pragma once

#include <cstdint>
#include <cstdlib>

namespace lmig {

enum class CompletionKind : uint8_t {
  kInvalid = 0,   // user_data / wr_id 0: nothing to dispatch (an unset token)
  kReactorOp = 1,  // io_uring: value = the reactor's Completion* for the operation
  kRdmaWrite = 2,  // RDMA WRITE: value = the send-queue entries a signalled one retires
  kRdmaSend = 3,   // control SEND: value = its send buffer
  kRdmaRecv = 4,   // control RECV: value = its receive buffer
};

struct CompletionToken {
  static constexpr int kValueBits = 56;
  static constexpr uint64_t kMaxValue = (uint64_t{1} << kValueBits) - 1;

  CompletionKind kind = CompletionKind::kInvalid;
  uint64_t value = 0;

  // The 64 bits for user_data / wr_id. A value beyond kMaxValue is a programming error (it
  // would alias another token), so it aborts rather than truncate.
  uint64_t Pack() const {
    if (value > kMaxValue) {
      std::abort();
    }
    return (static_cast<uint64_t>(kind) << kValueBits) | value;
  }
  static CompletionToken Unpack(uint64_t bits) {
    return {static_cast<CompletionKind>(bits >> kValueBits), bits & kMaxValue};
  }
};

// A token's kind in words, for errors ("RDMA WRITE to ... failed").
inline const char* CompletionKindName(CompletionKind k) {
  switch (k) {
    case CompletionKind::kReactorOp: return "io_uring operation";
    case CompletionKind::kRdmaWrite: return "RDMA WRITE";
    case CompletionKind::kRdmaSend: return "SEND";
    case CompletionKind::kRdmaRecv: return "RECV";
    default: return "work request";
  }
}

}  // namespace lmig
