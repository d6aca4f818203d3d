// The RDMA transport on a real verbs device: Soft-RoCE (rxe0) inside the lab, loopback through
// the lab's eth0 address. Runs only in the lab (tools/lab run -- build/lab_rdma_tests), where
// ctest's lab label puts it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <thread>

#include "include/lmig/transport.h"

namespace lmig {
namespace {

constexpr uint64_t kPage = 4096;

std::string LabIp() {
  const char* ip = std::getenv("LMIG_LAB_IP");
  return ip != nullptr ? ip : "10.0.2.15";
}

uint16_t NextPort() {
  static uint16_t port = static_cast<uint16_t>(30000 + (::getpid() % 1000) * 10);
  return ++port;
}

struct Pair {
  std::unique_ptr<Transport> src, dst;
};

// Connects a source and a destination transport; SRC_OPTS/DST_OPTS may differ (MR chunking).
Pair Connect(const TransportOptions& src_opts, const TransportOptions& dst_opts) {
  const uint16_t port = NextPort();
  auto listener = ListenTransport(proto::TransportKind::kRdma, LabIp(), port, dst_opts);
  EXPECT_TRUE(listener.ok()) << listener.status();
  if (!listener.ok()) {
    return {};
  }
  Pair p;
  std::thread t([&] {
    auto d = (*listener)->Accept(absl::InfiniteFuture());
    EXPECT_TRUE(d.ok()) << d.status();
    if (d.ok()) {
      p.dst = std::move(*d);
    }
  });
  auto s = ConnectTransport(proto::TransportKind::kRdma, LabIp(), port, src_opts);
  t.join();
  EXPECT_TRUE(s.ok()) << s.status();
  if (s.ok()) {
    p.src = std::move(*s);
  }
  return p;
}

// Two guest-memory-like buffers: SRC filled with a pattern that differs per byte and page,
// DST zero. Registers both and hands the destination's region table to the source.
struct Buffers {
  std::vector<uint8_t> src, dst;
  explicit Buffers(uint64_t size) : src(size), dst(size, 0) {
    std::mt19937_64 rng(size);
    for (uint64_t i = 0; i < size; i += 8) {
      const uint64_t v = rng();
      std::memcpy(&src[i], &v, 8);
    }
  }
  absl::Status Attach(Pair& p) {
    auto blob = p.dst->AttachMemory(dst.data(), dst.size());
    if (!blob.ok()) {
      return blob.status();
    }
    auto s = p.src->AttachMemory(src.data(), src.size());
    if (!s.ok()) {
      return s.status();
    }
    p.dst->AllowIncomingPages(true);  // the destination's QP opens to remote writes
    return p.src->SetPeerMemory(*blob);
  }
};

// Writes RANGES and flushes: a refused WRITE surfaces at either, the first error is returned.
absl::Status WriteAndFlush(Pair& p, const std::vector<RamRange>& ranges) {
  const absl::Status w = p.src->Write(ranges);
  return w.ok() ? p.src->Flush() : w;
}

// Writes RANGES, then sends an END_ROUND behind them; once the destination has received it,
// every written byte must be there (RC ordering) and every other byte still zero.
void WriteAndVerify(Pair& p, Buffers& b, const std::vector<RamRange>& ranges) {
  ASSERT_TRUE(p.src->Write(ranges).ok());
  ASSERT_TRUE(p.src->Flush().ok());
  ASSERT_TRUE(p.src->Send(proto::MsgType::kEndRound, 7, std::vector<uint8_t>(24, 1)).ok());
  auto m = p.dst->Receive();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->type, proto::MsgType::kEndRound);
  std::vector<uint8_t> expect(b.src.size(), 0);
  for (const RamRange& r : ranges) {
    std::memcpy(&expect[r.offset], &b.src[r.offset], r.length);
  }
  for (uint64_t pg = 0; pg < b.src.size() / kPage; ++pg) {
    ASSERT_EQ(0, std::memcmp(&expect[pg * kPage], &b.dst[pg * kPage], kPage))
        << "page " << pg << " differs";
  }
}

TEST(RdmaTransport, WritesRunsByteForByteAndOrdersControlAfterData) {
  Pair p = Connect({}, {});
  ASSERT_TRUE(p.src && p.dst);
  Buffers b(16 << 20);
  ASSERT_TRUE(b.Attach(p).ok());
  // Single pages, a long run larger than one WRITE (max_write_bytes), the last page.
  const std::vector<RamRange> ranges = {
      {0, kPage}, {5 * kPage, 3 * kPage}, {100 * kPage, 1000 * kPage}, {(4096 - 1) * kPage, kPage}};
  WriteAndVerify(p, b, ranges);
  EXPECT_EQ(p.src->stats().data_bytes, 1005 * kPage);
  EXPECT_TRUE(p.src->stats().zero_copy);
  // Control travels the other way too (the destination's ACK).
  ASSERT_TRUE(p.dst->Send(proto::MsgType::kAck, 0, {}).ok());
  auto ack = p.src->Receive();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->type, proto::MsgType::kAck);
}

TEST(RdmaTransport, RunsAcrossMrChunkBoundaries) {
  // Both sides register in 1 MiB MRs, with the destination's chunks offset from the source's
  // by using 1 MiB on one side and 1.5 MiB on the other, so runs cross local and remote
  // boundaries at different places.
  TransportOptions so, dopt;
  so.mr_chunk_bytes = 1 << 20;
  dopt.mr_chunk_bytes = 3 << 19;
  Pair p = Connect(so, dopt);
  ASSERT_TRUE(p.src && p.dst);
  Buffers b(8 << 20);
  ASSERT_TRUE(b.Attach(p).ok());
  const std::vector<RamRange> ranges = {
      {(1 << 20) - kPage, 2 * kPage},            // crosses the first local boundary
      {(3 << 19) - 2 * kPage, 4 * kPage},        // crosses the first remote boundary
      {(2 << 20) + 3 * kPage, (4 << 20)},        // spans several of both
      {(8 << 20) - kPage, kPage}};
  WriteAndVerify(p, b, ranges);
}

TEST(RdmaTransport, SgeListLongerThanOneWorkRequestIsSplit) {
  // The source registers every 4 KiB page as its own MR, so a contiguous 2 MiB run needs 512
  // scatter-gather entries: more than any one WRITE takes (max_sge), so it becomes several.
  TransportOptions so;
  so.mr_chunk_bytes = kPage;
  Pair p = Connect(so, {});
  ASSERT_TRUE(p.src && p.dst);
  Buffers b(4 << 20);
  ASSERT_TRUE(b.Attach(p).ok());
  const std::vector<RamRange> ranges = {{kPage, 512 * kPage}};
  WriteAndVerify(p, b, ranges);
  // At most 32 SGEs and 256 KiB per WRITE: at least 16 work requests for 512 pages.
  EXPECT_GE(p.src->stats().work_requests, 16u);
  EXPECT_EQ(p.src->stats().data_bytes, 512 * kPage);
}

TEST(RdmaTransport, RevokedRemoteAccessFailsLaterWritesWithAPreciseError) {
  TransportOptions o;
  o.timeout = absl::Seconds(10);
  Pair p = Connect(o, o);
  ASSERT_TRUE(p.src && p.dst);
  Buffers b(1 << 20);
  ASSERT_TRUE(b.Attach(p).ok());
  WriteAndVerify(p, b, {{0, 4 * kPage}});
  // After migration the destination deregisters its MRs: the old rkeys must not work.
  p.dst->RevokeRemoteAccess();
  b.src[10 * kPage] ^= 0xff;
  const absl::Status f = WriteAndFlush(p, {{10 * kPage, kPage}});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.message()), testing::HasSubstr("remote access error"));
  EXPECT_EQ(b.dst[10 * kPage], 0);
}

// The destination's MRs say where WRITEs may go, its QP says whether they may come at all: a
// QP not (or no longer) open to pages refuses them with the MRs still registered, and the
// memory stays untouched.
TEST(RdmaTransport, ADestinationQpClosedToPagesRefusesWritesWithItsMemoryRegistered) {
  for (const bool opened_then_closed : {false, true}) {
    TransportOptions o;
    o.timeout = absl::Seconds(10);
    Pair p = Connect(o, o);
    ASSERT_TRUE(p.src && p.dst);
    Buffers b(1 << 20);
    ASSERT_TRUE(b.Attach(p).ok());
    if (opened_then_closed) {
      WriteAndVerify(p, b, {{0, 4 * kPage}});
    }
    p.dst->AllowIncomingPages(false);
    const absl::Status f = WriteAndFlush(p, {{10 * kPage, kPage}});
    ASSERT_FALSE(f.ok()) << "a WRITE landed through a QP closed to pages";
    EXPECT_THAT(std::string(f.message()), testing::HasSubstr("remote invalid request"));
    EXPECT_EQ(b.dst[10 * kPage], 0);
  }
}

// A failed unsignalled WRITE (wr_id 0) was reported as a failed SEND.
TEST(RdmaTransport, AFailedUnsignalledWriteIsNamedAsAWrite) {
  TransportOptions o;
  o.timeout = absl::Seconds(10);
  Pair p = Connect(o, o);
  ASSERT_TRUE(p.src && p.dst);
  Buffers b(1 << 20);
  ASSERT_TRUE(b.Attach(p).ok());
  p.dst->RevokeRemoteAccess();
  // Two WRITEs (the pages are not contiguous): the first goes unsignalled and fails first.
  const absl::Status f = WriteAndFlush(p, {{0, kPage}, {2 * kPage, kPage}});
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(std::string(f.message()), testing::StartsWith("RDMA WRITE to "));
  EXPECT_THAT(std::string(f.message()), testing::HasSubstr("remote access error"));
}

TEST(RdmaTransport, WritesBeyondThePeersMemoryAreRefused) {
  Pair p = Connect({}, {});
  ASSERT_TRUE(p.src && p.dst);
  Buffers b(1 << 20);
  ASSERT_TRUE(b.Attach(p).ok());
  const absl::Status s = p.src->Write(std::vector<RamRange>{{(1 << 20) - kPage, 2 * kPage}});
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
}

TEST(RdmaTransport, NobodyListeningNamesThePeer) {
  TransportOptions o;
  o.timeout = absl::Seconds(5);
  const uint16_t port = NextPort();
  auto t = ConnectTransport(proto::TransportKind::kRdma, LabIp(), port, o);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()),
              testing::HasSubstr(absl::StrCat(LabIp(), ":", port)));
}

TEST(RdmaTransport, UnknownDeviceIsNamedOnEitherSide) {
  TransportOptions bad;
  bad.rdma_device = "mlx5_42";
  bad.timeout = absl::Seconds(10);
  // The source: the route to the peer goes through rxe0, not the device asked for.
  auto c = ConnectTransport(proto::TransportKind::kRdma, LabIp(), NextPort(), bad);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), testing::HasSubstr("mlx5_42"));
  // The destination refuses the connection and says why; the source hears a rejection.
  const uint16_t port = NextPort();
  auto l = ListenTransport(proto::TransportKind::kRdma, LabIp(), port, bad);
  ASSERT_TRUE(l.ok()) << l.status();
  absl::Status connect_status;
  std::thread t([&] {
    TransportOptions good;
    good.timeout = absl::Seconds(10);
    connect_status = ConnectTransport(proto::TransportKind::kRdma, LabIp(), port, good).status();
  });
  const absl::Status s = (*l)->Accept(absl::InfiniteFuture()).status();
  t.join();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("mlx5_42"));
  EXPECT_FALSE(connect_status.ok());
}

}  // namespace
}  // namespace lmig
