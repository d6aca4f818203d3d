// The stop-and-copy phase accounting: what the phases add up to, what is missing, and the
// destination's phase table in the ACK as hostile input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "include/lmig/protocol.h"
#include "nlohmann/json.hpp"
#include "src/migration/stats.h"

namespace lmig {
namespace {

using proto::DstPhase;
using proto::PhaseTiming;

Phase P(const char* name, double ms, bool concurrent = false) {
  Phase p;
  p.name = name;
  p.side = "source";
  p.ms = ms;
  p.concurrent = concurrent;
  return p;
}

TEST(Phases, SumToTheTotalWithoutConcurrentOnes) {
  std::vector<Phase> ph = {P("vcpus_stopped", 1.5), P("state_saved", 2.5),
                           P("dst.state_validated", 9.0, /*concurrent=*/true),
                           P("ack_round_trip", 6.0)};
  // Parts of a phase are a breakdown of it, never added again.
  ph[0].parts = {P("vcpu0", 1.0, true), P("vcpu1", 1.5, true)};
  const PhaseCheck c = CheckPhases(ph, 10.0);
  EXPECT_DOUBLE_EQ(c.sum_ms, 10.0);
  EXPECT_DOUBLE_EQ(c.unaccounted_ms, 0.0);
  EXPECT_TRUE(c.Within(0.10, 10.0));
  EXPECT_TRUE(c.missing.empty());
}

TEST(Phases, AGapBeyondTenPercentIsSeen) {
  const std::vector<Phase> ph = {P("vcpus_stopped", 4.0), P("state_saved", 4.0)};
  const PhaseCheck short_of = CheckPhases(ph, 10.0);
  EXPECT_DOUBLE_EQ(short_of.unaccounted_ms, 2.0);
  EXPECT_FALSE(short_of.Within(0.10, 10.0));
  // Phases that claim more than the pause are as wrong as a gap.
  const PhaseCheck over = CheckPhases(ph, 7.0);
  EXPECT_DOUBLE_EQ(over.unaccounted_ms, -1.0);
  EXPECT_FALSE(over.Within(0.10, 7.0));
  EXPECT_TRUE(CheckPhases(ph, 8.5).Within(0.10, 8.5));
}

TEST(Phases, MissingPhasesAreReportedInTheirPlaceAndNotSummed) {
  // A pause that failed after the state was saved: the rest never happened.
  std::vector<Phase> ph = {P("vcpus_stopped", 1.1),
                           P("dirty_harvest", 0.2), P("final_pages_sent", 3.0),
                           P("final_pages_landed", 1.0), P("state_saved", 2.0),
                           P("source_vcpus_resumed", 0.5)};
  AddMissingPhases(ph, kSourcePausePhases);
  ASSERT_EQ(ph.size(), std::size(kSourcePausePhases) + 1);
  for (size_t i = 0; i < std::size(kSourcePausePhases); ++i) {
    EXPECT_EQ(ph[i].name, kSourcePausePhases[i]);
  }
  EXPECT_EQ(ph.back().name, "source_vcpus_resumed");  // an extra keeps its place at the end
  EXPECT_FALSE(ph[4].missing);  // state_saved
  EXPECT_TRUE(ph[5].missing);  // state_sent
  EXPECT_EQ(ph[7].side, "destination");
  const PhaseCheck c = CheckPhases(ph, 7.8);
  EXPECT_DOUBLE_EQ(c.sum_ms, 7.8);
  EXPECT_THAT(c.missing, testing::ElementsAre("state_sent", "complete_sent",
                                              "dst.complete_checked",
                                              "dst.remote_access_revoked", "dst.state_restored",
                                              "dst.vcpus_resumed", "ack_round_trip"));
  // A missing part is named under its phase.
  std::vector<Phase> restore = {P("dst.state_restored", 1.0)};
  restore[0].parts = {P("vcpu0", 0.5), P("vcpu1", 0)};
  restore[0].parts[1].missing = true;
  EXPECT_THAT(CheckPhases(restore, 1.0).missing,
              testing::ElementsAre("dst.state_restored/vcpu1"));
}

TEST(Phases, JsonAndReportShowMissingPhasesAsSuch) {
  MigrationStats s;
  s.role = "source";
  s.status = "completed";
  s.rounds = 2;
  s.downtime_ms = 3.0;
  s.phases = {P("vcpus_stopped", 1.0), P("state_saved", 2.0)};
  AddMissingPhases(s.phases, kSourcePausePhases);
  const nlohmann::json j = nlohmann::json::parse(s.ToJson());
  const auto& dp = j.at("downtime_phases");
  EXPECT_DOUBLE_EQ(dp.at("sum_ms").get<double>(), 3.0);
  EXPECT_DOUBLE_EQ(dp.at("unaccounted_ms").get<double>(), 0.0);
  bool saw_missing = false;
  for (const auto& p : dp.at("phases")) {
    if (p.at("name") == "state_sent") {
      EXPECT_TRUE(p.at("missing").get<bool>());
      EXPECT_TRUE(p.at("ms").is_null());
      saw_missing = true;
    }
  }
  EXPECT_TRUE(saw_missing);
  EXPECT_THAT(dp.at("missing"), testing::Contains("state_sent"));
  const std::string report = s.HumanReport();
  EXPECT_THAT(report, testing::ContainsRegex("state_sent +missing"));
  EXPECT_THAT(report, testing::HasSubstr("phases sum 3.00 ms of 3.00 ms"));
  EXPECT_THAT(report, testing::HasSubstr("missing: "));
}

PhaseTiming T(DstPhase p, uint64_t ns, uint16_t vcpu = proto::kVcpuNone) {
  PhaseTiming e{};
  e.phase = static_cast<uint16_t>(p);
  e.vcpu = vcpu;
  e.ns = ns;
  return e;
}

TEST(AckPhases, RoundTripThroughTheWire) {
  proto::Ack a{};
  a.complete_nonce = 42;
  a.total_pages = 7;
  const std::vector<PhaseTiming> ph = {T(DstPhase::kCompleteChecked, 1000),
                                       T(DstPhase::kRestoreVcpu, 2000, 0),
                                       T(DstPhase::kRestoreVcpu, 3000, 1),
                                       T(DstPhase::kResumed, 4000)};
  const std::vector<uint8_t> wire = proto::AckBytes(a, ph);
  EXPECT_EQ(wire.size(), sizeof(proto::Ack) + 4 * sizeof(PhaseTiming));
  EXPECT_LE(wire.size() + proto::kSealOverhead, proto::MaxPayload(proto::MsgType::kAck));
  auto m = proto::ParseAck(wire);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->ack.complete_nonce, 42u);
  ASSERT_EQ(m->phases.size(), 4u);
  EXPECT_EQ(m->phases[2].vcpu, 1);
  EXPECT_EQ(m->phases[3].ns, 4000u);
  EXPECT_TRUE(proto::CheckPhaseTimings(m->phases, 2).ok());
  // An ACK without phases (a destination that measured nothing) is still an ACK.
  auto bare = proto::ParseAck(proto::AckBytes(a, {}));
  ASSERT_TRUE(bare.ok());
  EXPECT_TRUE(bare->phases.empty());
}

TEST(AckPhases, AMisframedTableIsRefused) {
  proto::Ack a{};
  std::vector<uint8_t> wire = proto::AckBytes(a, std::vector<PhaseTiming>{
                                                     T(DstPhase::kResumed, 1)});
  // The count says one entry more than the payload holds, or one less.
  for (uint32_t n : {0u, 2u, proto::kMaxAckPhases + 1, 0xffffffffu}) {
    std::vector<uint8_t> w = wire;
    std::memcpy(w.data() + offsetof(proto::Ack, num_phases), &n, sizeof(n));
    EXPECT_FALSE(proto::ParseAck(w).ok()) << n;
  }
  std::vector<uint8_t> reserved = wire;
  reserved[offsetof(proto::Ack, reserved)] = 1;
  EXPECT_FALSE(proto::ParseAck(reserved).ok());
  EXPECT_FALSE(proto::ParseAck(std::vector<uint8_t>(sizeof(proto::Ack) - 1)).ok());
  // The frame bound holds the largest table and not one entry more.
  EXPECT_EQ(proto::MaxPayload(proto::MsgType::kAck),
            sizeof(proto::Ack) + proto::kMaxAckPhases * sizeof(PhaseTiming) +
                proto::kSealOverhead);
}

TEST(AckPhases, HostileValuesAreRefusedNamingTheEntry) {
  auto refused = [](std::vector<PhaseTiming> ph, uint32_t cpus, const char* what) {
    const absl::Status s = proto::CheckPhaseTimings(ph, cpus);
    EXPECT_FALSE(s.ok()) << what;
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr(what));
  };
  refused({T(static_cast<DstPhase>(9), 1)}, 1, "unknown phase 9");
  refused({T(static_cast<DstPhase>(0), 1)}, 1, "unknown phase 0");
  refused({T(static_cast<DstPhase>(0xffff), 1)}, 1, "unknown phase 65535");
  refused({T(DstPhase::kResumed, proto::kMaxPhaseNs + 1)}, 1, "at most");
  refused({T(DstPhase::kRestoreVcpu, 1, 2)}, 2, "vCPU 2, the guest has 2");
  refused({T(DstPhase::kRestoreVcpu, 1, proto::kVcpuNone)}, 64, "vCPU 65535");
  refused({T(DstPhase::kRestoreVcpu, 1, 0), T(DstPhase::kRestoreVcpu, 1, 0)}, 2, "twice");
  refused({T(DstPhase::kResumed, 1), T(DstPhase::kResumed, 1)}, 2, "vcpus_resumed twice");
  refused({T(DstPhase::kResumed, 1, 0)}, 2, "VM-wide but names vCPU 0");
  PhaseTiming r = T(DstPhase::kResumed, 1);
  r.reserved = 1;
  refused({r}, 1, "reserved");
  // The largest honest table passes: every fixed phase and group once, every vCPU once.
  std::vector<PhaseTiming> all;
  for (uint16_t p = 1; p <= static_cast<uint16_t>(DstPhase::kRestoreGroupLast); ++p) {
    if (std::string_view(proto::DstPhaseName(static_cast<DstPhase>(p))) == "invalid") {
      continue;
    }
    if (p == static_cast<uint16_t>(DstPhase::kRestoreVcpu)) {
      for (uint16_t v = 0; v < proto::kMaxVcpus; ++v) {
        all.push_back(T(DstPhase::kRestoreVcpu, 1, v));
      }
      continue;
    }
    all.push_back(T(static_cast<DstPhase>(p), 1));
  }
  EXPECT_LE(all.size(), proto::kMaxAckPhases);
  EXPECT_TRUE(proto::CheckPhaseTimings(all, proto::kMaxVcpus).ok());
}

}  // namespace
}  // namespace lmig
