// The RDMA write planner (transport/rdma/write_planner.h) on the host: the work requests it
// plans for ranges, MR chunks and remote regions, checked byte by byte without a verbs device.
#include "transport/rdma/write_planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>

namespace lmig::rdma {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kLocalBase = 0x7f1200000000;   // where the source's guest memory is mapped
constexpr uint64_t kRemoteBase = 0x7fa000000000;  // and the destination's

// SIZE bytes of guest memory at BASE in chunks of CHUNK (the last one shorter), keys from
// FIRST_KEY up: how the transport registers memory.
std::vector<MemoryRegion> Chunks(uint64_t size, uint64_t chunk, uint64_t base,
                                 uint32_t first_key) {
  std::vector<MemoryRegion> out;
  for (uint64_t off = 0; off < size; off += chunk) {
    out.push_back({off, std::min(chunk, size - off), base + off,
                   first_key + static_cast<uint32_t>(out.size())});
  }
  return out;
}

const MemoryRegion* Holding(const std::vector<MemoryRegion>& regions, uint64_t off) {
  for (const MemoryRegion& r : regions) {
    if (off >= r.offset && off - r.offset < r.length) {
      return &r;
    }
  }
  return nullptr;
}

// Checks PLAN against its inputs: every WRITE within the limits, every SGE inside one local MR
// with that MR's lkey, every byte written to the remote address and rkey of the region that
// holds its offset, and the bytes covered exactly those of RANGES, each once.
void ExpectCovers(const std::vector<PlannedWrite>& plan, const std::vector<RamRange>& ranges,
                  const std::vector<MemoryRegion>& local, const std::vector<MemoryRegion>& remote,
                  const WriteLimits& limits) {
  std::vector<RamRange> covered;
  for (size_t w = 0; w < plan.size(); ++w) {
    const PlannedWrite& wr = plan[w];
    ASSERT_FALSE(wr.sges.empty()) << "WRITE " << w;
    EXPECT_LE(wr.sges.size(), limits.max_sge) << "WRITE " << w;
    EXPECT_GT(wr.bytes, 0u) << "WRITE " << w;
    EXPECT_LE(wr.bytes, limits.max_write_bytes) << "WRITE " << w;
    uint64_t raddr = wr.remote_addr;
    uint64_t sum = 0;
    for (const ibv_sge& sge : wr.sges) {
      ASSERT_GT(sge.length, 0u) << "WRITE " << w;
      // The SGE's bytes are guest offsets [off, off + length) of one local MR.
      const MemoryRegion* l = nullptr;
      for (const MemoryRegion& r : local) {
        if (sge.addr >= r.addr && sge.addr + sge.length <= r.addr + r.length) {
          l = &r;
        }
      }
      ASSERT_NE(l, nullptr) << "WRITE " << w << ": SGE at 0x" << std::hex << sge.addr
                            << " outside every local MR";
      EXPECT_EQ(sge.lkey, l->key) << "WRITE " << w;
      const uint64_t off = l->offset + (sge.addr - l->addr);
      // ... written to the same offsets in one remote region, under its rkey.
      const MemoryRegion* r = Holding(remote, off);
      ASSERT_NE(r, nullptr) << "WRITE " << w;
      EXPECT_LE(off + sge.length, r->offset + r->length) << "WRITE " << w;
      EXPECT_EQ(wr.rkey, r->key) << "WRITE " << w;
      EXPECT_EQ(raddr, r->addr + (off - r->offset)) << "WRITE " << w;
      raddr += sge.length;
      sum += sge.length;
      covered.push_back({off, sge.length});
    }
    EXPECT_EQ(wr.bytes, sum) << "WRITE " << w;
  }
  // Exactly the ranges' bytes, each once: sorted, the pieces must not overlap, and merged they
  // must be the ranges merged.
  auto merged = [](std::vector<RamRange> v, bool check_overlap) {
    std::sort(v.begin(), v.end(), [](const RamRange& a, const RamRange& b) {
      return a.offset < b.offset;
    });
    std::vector<RamRange> out;
    for (const RamRange& r : v) {
      if (r.length == 0) {
        continue;
      }
      if (!out.empty()) {
        const uint64_t end = out.back().offset + out.back().length;
        if (check_overlap) {
          EXPECT_LE(end, r.offset) << "byte 0x" << std::hex << r.offset << " written twice";
        }
        if (end >= r.offset) {
          out.back().length = std::max(end, r.offset + r.length) - out.back().offset;
          continue;
        }
      }
      out.push_back(r);
    }
    return out;
  };
  const std::vector<RamRange> got = merged(covered, true);
  const std::vector<RamRange> want = merged(ranges, false);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].offset, want[i].offset) << i;
    EXPECT_EQ(got[i].length, want[i].length) << i;
  }
}

std::vector<PlannedWrite> Plan(const std::vector<RamRange>& ranges,
                               const std::vector<MemoryRegion>& local,
                               const std::vector<MemoryRegion>& remote,
                               const WriteLimits& limits) {
  auto plan = PlanWrites(ranges, local, remote, limits);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) {
    return {};
  }
  ExpectCovers(*plan, ranges, local, remote, limits);
  return *plan;
}

constexpr WriteLimits kLimits{32, 256 << 10};

TEST(WritePlanner, EmptyInputPlansNothing) {
  const auto local = Chunks(1 << 20, 1 << 20, kLocalBase, 1);
  const auto remote = Chunks(1 << 20, 1 << 20, kRemoteBase, 100);
  EXPECT_TRUE(Plan({}, local, remote, kLimits).empty());
  EXPECT_TRUE(Plan({{5 * kPage, 0}}, local, remote, kLimits).empty());
}

TEST(WritePlanner, ContiguousRangesMergeIntoOneWrite) {
  const auto local = Chunks(1 << 20, 1 << 20, kLocalBase, 1);
  const auto remote = Chunks(1 << 20, 1 << 20, kRemoteBase, 100);
  const auto plan = Plan({{0, kPage}, {kPage, 2 * kPage}, {3 * kPage, kPage}}, local, remote,
                         kLimits);
  ASSERT_EQ(plan.size(), 1u);
  ASSERT_EQ(plan[0].sges.size(), 1u);
  EXPECT_EQ(plan[0].bytes, 4 * kPage);
  EXPECT_EQ(plan[0].sges[0].addr, kLocalBase);
  EXPECT_EQ(plan[0].sges[0].lkey, 1u);
  EXPECT_EQ(plan[0].remote_addr, kRemoteBase);
  EXPECT_EQ(plan[0].rkey, 100u);
}

TEST(WritePlanner, RangesWithAGapAreWritesOfTheirOwn) {
  const auto local = Chunks(1 << 20, 1 << 20, kLocalBase, 1);
  const auto remote = Chunks(1 << 20, 1 << 20, kRemoteBase, 100);
  const auto plan = Plan({{0, kPage}, {2 * kPage, kPage}}, local, remote, kLimits);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[1].remote_addr, kRemoteBase + 2 * kPage);
  EXPECT_EQ(plan[1].sges[0].addr, kLocalBase + 2 * kPage);
}

TEST(WritePlanner, ARunAcrossALocalMrBoundaryIsOneWriteOfTwoSges) {
  const auto local = Chunks(4 << 20, 1 << 20, kLocalBase, 1);
  const auto remote = Chunks(4 << 20, 4 << 20, kRemoteBase, 100);
  const auto plan = Plan({{(1 << 20) - kPage, 2 * kPage}}, local, remote, kLimits);
  ASSERT_EQ(plan.size(), 1u);
  ASSERT_EQ(plan[0].sges.size(), 2u);
  EXPECT_EQ(plan[0].sges[0].lkey, 1u);
  EXPECT_EQ(plan[0].sges[1].lkey, 2u);
  EXPECT_EQ(plan[0].sges[1].addr, kLocalBase + (1 << 20));
}

TEST(WritePlanner, ARunAcrossARemoteRegionBoundaryIsTwoWrites) {
  const auto local = Chunks(4 << 20, 4 << 20, kLocalBase, 1);
  const auto remote = Chunks(4 << 20, 3 << 19, kRemoteBase, 100);
  const auto plan = Plan({{(3 << 19) - 2 * kPage, 4 * kPage}}, local, remote, kLimits);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].rkey, 100u);
  EXPECT_EQ(plan[0].bytes, 2 * kPage);
  EXPECT_EQ(plan[1].rkey, 101u);
  EXPECT_EQ(plan[1].remote_addr, kRemoteBase + (3 << 19));
  EXPECT_EQ(plan[1].bytes, 2 * kPage);
}

TEST(WritePlanner, MaxSgeSplitsARunOverManySmallMrs) {
  // Every page its own MR (lab test SgeListLongerThanOneWorkRequestIsSplit): 512 pages need
  // 512 SGEs, 32 to a WRITE.
  const auto local = Chunks(4 << 20, kPage, kLocalBase, 1);
  const auto remote = Chunks(4 << 20, 4 << 20, kRemoteBase, 100);
  const auto plan = Plan({{kPage, 512 * kPage}}, local, remote, kLimits);
  ASSERT_EQ(plan.size(), 16u);
  for (const PlannedWrite& w : plan) {
    EXPECT_EQ(w.sges.size(), 32u);
    EXPECT_EQ(w.bytes, 32 * kPage);
  }
  const auto one = Plan({{kPage, 5 * kPage}}, local, remote, {1, 256 << 10});
  EXPECT_EQ(one.size(), 5u);
}

TEST(WritePlanner, MaxWriteBytesSplitsALongRun) {
  const auto local = Chunks(16 << 20, 16 << 20, kLocalBase, 1);
  const auto remote = Chunks(16 << 20, 16 << 20, kRemoteBase, 100);
  const auto plan = Plan({{100 * kPage, 1000 * kPage}}, local, remote, kLimits);
  ASSERT_EQ(plan.size(), 16u);  // 4000 KiB in 256 KiB WRITEs
  for (size_t i = 0; i + 1 < plan.size(); ++i) {
    EXPECT_EQ(plan[i].bytes, 256u << 10) << i;
    EXPECT_EQ(plan[i + 1].remote_addr, plan[i].remote_addr + plan[i].bytes) << i;
  }
  EXPECT_EQ(plan.back().bytes, (1000 * kPage) % (256 << 10));
  // A limit that is not a page multiple, and ranges that are not page-aligned either.
  Plan({{3, 100000}, {100003, 17}, {200000, 5}}, local, remote, {3, 10000});
}

TEST(WritePlanner, RandomLayoutsCoverEveryByteOnce) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    const uint64_t size = (1 + rng() % 64) * kPage;
    const auto local = Chunks(size, (1 + rng() % 16) * kPage, kLocalBase, 1);
    const auto remote = Chunks(size, (1 + rng() % 16) * kPage, kRemoteBase, 1000);
    std::vector<RamRange> ranges;
    for (uint64_t off = rng() % (2 * kPage); off < size;) {
      const uint64_t len = std::min<uint64_t>(size - off, 1 + rng() % (8 * kPage));
      ranges.push_back({off, len});
      off += len + (rng() % 3 == 0 ? 0 : rng() % (4 * kPage));
    }
    const WriteLimits limits{1 + rng() % 6, 1 + rng() % (64 << 10)};
    SCOPED_TRACE(testing::Message() << "trial " << trial);
    Plan(ranges, local, remote, limits);
  }
}

TEST(WritePlanner, RangesOutsideEveryRegionAreRefused) {
  const auto local = Chunks(1 << 20, 256 << 10, kLocalBase, 1);
  const auto remote = Chunks(1 << 20, 256 << 10, kRemoteBase, 100);
  const auto smaller_peer = Chunks(512 << 10, 256 << 10, kRemoteBase, 100);
  std::vector<MemoryRegion> holed = local;
  holed.erase(holed.begin() + 1);  // no MR for [256 KiB, 512 KiB)
  struct Case {
    std::vector<RamRange> ranges;
    const std::vector<MemoryRegion>* local;
    const std::vector<MemoryRegion>* remote;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{{0, kPage}, {(1 << 20) - kPage, 2 * kPage}}, &local, &remote,
       "RDMA write [0xff000, +0x2000) beyond guest memory: 0x100000 is in no local memory "
       "region"},
      {{{(512 << 10) - kPage, 2 * kPage}}, &local, &smaller_peer,
       "[0x7f000, +0x2000) beyond guest memory: 0x80000 is in no region of the destination's "
       "memory"},
      {{{(256 << 10) - kPage, 2 * kPage}}, &holed, &remote,
       "0x40000 is in no local memory region"},
      {{{UINT64_MAX - kPage, 2 * kPage}}, &local, &remote, "its end overflows"},
      {{{0, kPage}}, &local, nullptr, "0x0 is in no region of the destination's memory"},
  };
  for (const Case& c : cases) {
    const std::vector<MemoryRegion> none;
    const absl::Status s =
        PlanWrites(c.ranges, *c.local, c.remote ? *c.remote : none, kLimits).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << c.says;
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr(c.says));
  }
  EXPECT_TRUE(PlanWrites({}, local, {}, kLimits).ok());  // nothing to write needs no region
}

TEST(WritePlanner, ImpossibleLimitsAreRefused) {
  const auto local = Chunks(1 << 20, 1 << 20, kLocalBase, 1);
  const std::vector<RamRange> one = {{0, kPage}};
  for (const WriteLimits& l : {WriteLimits{0, 4096}, WriteLimits{1, 0},
                               WriteLimits{1, uint64_t{1} << 32}}) {
    EXPECT_EQ(PlanWrites(one, local, local, l).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace lmig::rdma
