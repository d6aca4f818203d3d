// Host KVM tests with tiny real-mode guests.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <regex>
#include <thread>

#include "src/arch/x86_64/cpu.h"
#include "src/machine/machine.h"
#include "tests/unit/tiny_guest.h"

namespace lmig {
namespace {

using namespace testing_guest;

struct Vm {
  std::unique_ptr<ConsoleBuffer> console;
  std::unique_ptr<Machine> machine;
};

Vm MakeVm(DirtyMode mode = DirtyMode::kRing, uint64_t mem = 16ull << 20) {
  Vm vm;
  vm.console = *ConsoleBuffer::Create();
  MachineConfig c;
  c.mem_size = mem;
  c.dirty_mode = mode;
  auto m = Machine::Create(c, vm.console.get());
  EXPECT_TRUE(m.ok()) << m.status();
  vm.machine = std::move(*m);
  return vm;
}

TEST(TinyGuest, UartOutputReachesTheConsoleAndResetEndsTheRun) {
  Vm vm = MakeVm();
  ASSERT_TRUE(LoadRealMode(*vm.machine, kHelloReset).ok());
  ASSERT_TRUE(vm.machine->Start().ok());
  ASSERT_TRUE(WaitStopped(*vm.machine, 20000));
  vm.machine->Join();
  EXPECT_EQ(vm.machine->exit_info().kind, ExitInfo::kReset);
  EXPECT_EQ(vm.console->Take(), "Hi");
  EXPECT_GE(vm.machine->exit_count(), 3u);  // two UART writes and the i8042 write
}

TEST(TinyGuest, AcpiS5PowersOffWithSuccess) {
  // What Linux's acpi_power_off does: SLP_TYP=5 first, then with SLP_EN, to PM1a control.
  const std::vector<uint8_t> code = {
      0xBA, 0x04, 0x06,  // mov dx, 0x604
      0xED,              // in ax, dx (SCI_EN reads 1)
      0xA3, 0x00, 0x20,  // mov [0x2000], ax
      0xB8, 0x00, 0x14,  // mov ax, 5 << 10
      0xEF,              // out dx, ax
      0xB8, 0x00, 0x34,  // mov ax, 5 << 10 | 1 << 13
      0xEF,              // out dx, ax
      0xF4,              // hlt: never reached
  };
  Vm vm = MakeVm();
  ASSERT_TRUE(LoadRealMode(*vm.machine, code).ok());
  ASSERT_TRUE(vm.machine->Start().ok());
  ASSERT_TRUE(WaitStopped(*vm.machine, 20000));
  vm.machine->Join();
  EXPECT_EQ(vm.machine->exit_info().kind, ExitInfo::kShutdown);
  EXPECT_THAT(vm.machine->exit_info().message, testing::HasSubstr("powered off"));
  EXPECT_EQ(vm.machine->memory().base()[0x2000] & 1, 1);
}

TEST(TinyGuest, FatalGuestFaultIsAnErrorNamingTheExitAndRip) {
  Vm vm = MakeVm();
  // Flat 32-bit protected mode with an empty IDT: int3 -> #GP -> #DF -> triple fault.
  Machine& m = *vm.machine;
  x86::WriteBootGdt(m.memory().low(), false);
  m.memory().base()[kCodeAddr] = 0xCC;  // int3
  auto sregs = m.vcpu(0).GetSregs();
  ASSERT_TRUE(sregs.ok());
  ASSERT_TRUE(m.vcpu(0).SetSregs(x86::BootSregs(*sregs, false)).ok());
  ASSERT_TRUE(m.vcpu(0).SetRegs(x86::BootRegs(kCodeAddr)).ok());
  ASSERT_TRUE(vm.machine->Start().ok());
  ASSERT_TRUE(WaitStopped(*vm.machine, 20000));
  vm.machine->Join();
  const ExitInfo e = vm.machine->exit_info();
  EXPECT_EQ(e.kind, ExitInfo::kError);
  // Hardware KVM reports the triple fault; the bare host's instruction emulator (PVM) gives
  // up on the exception delivery as a KVM internal error. Both are one-line diagnoses.
  EXPECT_THAT(e.message, testing::ContainsRegex("triple fault|KVM internal error"));
  EXPECT_THAT(e.message, testing::HasSubstr("rip=0x"));
}

// 64-bit guest: identity-mapped long mode as the kernel entry uses it; loops RCX times, prints
// 'L', resets. LMIG_LONGMODE_ITERATIONS (the lab smoke test sets 50M) checks nested speed.
TEST(TinyGuest, LongModeLoopRunsAndResets) {
  const char* env = std::getenv("LMIG_LONGMODE_ITERATIONS");
  const uint64_t iters = env ? std::strtoull(env, nullptr, 10) : 1000;
  Vm vm = MakeVm();
  Machine& m = *vm.machine;
  std::vector<uint8_t> code = {0x48, 0xB9};
  for (int i = 0; i < 8; ++i) {
    code.push_back(static_cast<uint8_t>(iters >> (8 * i)));
  }
  const std::vector<uint8_t> rest = {0x48, 0xFF, 0xC9, 0x75, 0xFB,  // dec rcx; jnz
                                     0x66, 0xBA, 0xF8, 0x03, 0xB0, 'L', 0xEE,
                                     0xB0, 0xFE, 0xE6, 0x64, 0xF4};
  code.insert(code.end(), rest.begin(), rest.end());
  std::memcpy(m.memory().base() + kCodeAddr, code.data(), code.size());
  x86::WriteBootPageTables(m.memory().low());
  x86::WriteBootGdt(m.memory().low(), true);
  auto sregs = m.vcpu(0).GetSregs();
  ASSERT_TRUE(sregs.ok());
  ASSERT_TRUE(m.vcpu(0).SetSregs(x86::BootSregs(*sregs, true)).ok());
  ASSERT_TRUE(m.vcpu(0).SetRegs(x86::BootRegs(kCodeAddr)).ok());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(m.Start().ok());
  ASSERT_TRUE(WaitStopped(m, 60000));
  m.Join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(m.exit_info().kind, ExitInfo::kReset) << m.exit_info().message;
  EXPECT_EQ(vm.console->Take(), "L");
  std::printf("long-mode loop: %llu iterations in %.3f s (%.1f M/s)\n",
              static_cast<unsigned long long>(iters), secs, iters / secs / 1e6);
  if (iters >= 10'000'000) {
    EXPECT_GT(iters / secs, 20e6) << "not running at nested-KVM speed";
  }
}

class DirtyTracking : public testing::TestWithParam<DirtyMode> {};

TEST_P(DirtyTracking, ReportsExactlyThePagesTheGuestWrote) {
  Vm vm = MakeVm(GetParam());
  ASSERT_TRUE(LoadRealMode(*vm.machine, kWritePages).ok());
  ASSERT_TRUE(vm.machine->dirty_log().Start().ok());
  ASSERT_TRUE(vm.machine->Start().ok());
  ASSERT_TRUE(WaitStopped(*vm.machine, 20000));
  vm.machine->Join();
  PageBitmap dirty(vm.machine->memory().num_pages());
  ASSERT_TRUE(vm.machine->dirty_log().Collect(dirty).ok());
  std::vector<uint64_t> pages;
  for (uint64_t p = 0; p < dirty.size(); ++p) {
    if (dirty.Test(p)) {
      pages.push_back(p);
    }
  }
  EXPECT_EQ(pages, (std::vector<uint64_t>{0x5, 0x7, 0x30}));
  EXPECT_EQ(vm.machine->memory().base()[0x30010], 0x33);
  // Collected pages are re-protected: nothing new without new writes.
  PageBitmap again(vm.machine->memory().num_pages());
  ASSERT_TRUE(vm.machine->dirty_log().Collect(again).ok());
  EXPECT_EQ(again.Count(), 0u);
  EXPECT_TRUE(vm.machine->dirty_log().Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(RingAndBitmap, DirtyTracking,
                         testing::Values(DirtyMode::kRing, DirtyMode::kBitmap),
                         [](const auto& info) {
                           return info.param == DirtyMode::kRing ? "Ring" : "Bitmap";
                         });

TEST(TinyGuest, StateSavedMidRunContinuesInASecondVm) {
  Vm a = MakeVm();
  ASSERT_TRUE(LoadRealMode(*a.machine, kCounter).ok());
  ASSERT_TRUE(a.machine->Start().ok());
  std::string out_a = TakeOutput(*a.console, 6);
  a.machine->Pause();
  out_a += a.console->Take();
  ASSERT_GE(out_a.size(), 6u);
  ASSERT_LT(out_a.size(), 40u) << "the guest finished before it could be paused";
  auto state = a.machine->SaveState();
  ASSERT_TRUE(state.ok()) << state.status();

  Vm b = MakeVm();
  std::memcpy(b.machine->memory().base(), a.machine->memory().base(),
              a.machine->memory().size());
  ASSERT_TRUE(b.machine->RestoreState(*state).ok());
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
  ASSERT_TRUE(b.machine->Start().ok());
  ASSERT_TRUE(WaitStopped(*b.machine, 30000));
  b.machine->Join();
  EXPECT_EQ(b.machine->exit_info().kind, ExitInfo::kReset);
  // Nothing lost, nothing repeated.
  EXPECT_EQ(out_a + b.console->Take(), CounterOutput());
}

// A page fault KVM has queued but not delivered when the source pauses (e.g. one raised while
// emulating an instruction) moves as pending, with its address still a payload: delivering it
// only on the destination writes CR2 there, at delivery, as the CPU would have.
TEST(TinyGuest, PendingPageFaultAndItsAddressSurviveTheMove) {
  Vm a = MakeVm();
  ASSERT_TRUE(LoadRealMode(*a.machine, kCounter).ok());
  auto sregs = a.machine->vcpu(0).GetSregs();
  ASSERT_TRUE(sregs.ok());
  sregs->cr2 = 0x1111;
  ASSERT_TRUE(a.machine->vcpu(0).SetSregs(*sregs).ok());
  auto ev = a.machine->vcpu(0).GetVcpuEvents();
  ASSERT_TRUE(ev.ok());
  ev->flags |= KVM_VCPUEVENT_VALID_PAYLOAD;
  ev->exception.pending = 1;
  ev->exception.nr = 14;
  ev->exception.has_error_code = 1;
  ev->exception.error_code = 2;
  ev->exception_has_payload = 1;
  ev->exception_payload = 0x5000;
  ASSERT_TRUE(a.machine->vcpu(0).SetVcpuEvents(*ev).ok());
  auto state = a.machine->SaveState();
  ASSERT_TRUE(state.ok()) << state.status();

  Vm b = MakeVm();
  ASSERT_TRUE(b.machine->RestoreState(*state).ok());
  auto got = b.machine->vcpu(0).GetVcpuEvents();
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->exception.pending, 1);
  EXPECT_EQ(got->exception.injected, 0);
  EXPECT_EQ(got->exception.nr, 14);
  EXPECT_EQ(got->exception.error_code, 2u);
  EXPECT_EQ(got->exception_has_payload, 1);
  EXPECT_EQ(got->exception_payload, 0x5000u);
  EXPECT_EQ(b.machine->vcpu(0).GetSregs()->cr2, 0x1111u);
}

TEST(TinyGuest, DescribeShowsWhereTheGuestIsAndPausesNest) {
  Vm a = MakeVm();
  ASSERT_TRUE(LoadRealMode(*a.machine, kCounter).ok());
  ASSERT_TRUE(a.machine->Start().ok());
  std::string out = TakeOutput(*a.console, 3);
  a.machine->Pause();  // e.g. a migration's stop-and-copy, with a state dump inside it
  auto text = a.machine->Describe();
  ASSERT_TRUE(text.ok()) << text.status();
  // The counter loop spans kCodeAddr .. kCodeAddr + 29; the UART's THR interrupt is enabled
  // by nobody, so its line is low.
  const std::regex rip(R"(vcpu0: rip=0x(10[01][0-9a-f]) .* (runnable|halted) )");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(*text, m, rip)) << *text;
  EXPECT_LT(std::stoul(m[1], nullptr, 16), kCodeAddr + 29);
  EXPECT_THAT(*text, testing::HasSubstr("ioapic pin4: "));
  EXPECT_THAT(*text, testing::HasSubstr(" irq=0"));
  // Describe's own pause ended, the outer one holds: no output while it does.
  out += a.console->Take();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(a.console->Take(), "");
  a.machine->Resume();
  ASSERT_TRUE(WaitStopped(*a.machine, 30000));
  a.machine->Join();
  EXPECT_EQ(out + a.console->Take(), CounterOutput());
}

TEST(Machine, RejectsBadConfigurations) {
  auto console = *ConsoleBuffer::Create();
  MachineConfig c;
  c.num_cpus = 0;
  EXPECT_THAT(std::string(Machine::Create(c, console.get()).status().message()),
              testing::HasSubstr("--cpus 0"));
  c.num_cpus = 1;
  c.kvm_path = "/nonexistent/kvm";
  EXPECT_THAT(std::string(Machine::Create(c, console.get()).status().message()),
              testing::HasSubstr("/nonexistent/kvm"));
}

}  // namespace
}  // namespace lmig
