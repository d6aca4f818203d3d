// Tiny hand-written real-mode guests for host tests (the bare host's KVM emulates guests at
// ~1-2 MIPS: fine for a few thousand instructions).
#pragma once

#include <poll.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "include/lmig/status.h"
#include "src/machine/machine.h"
#include "src/migration/machine_vm.h"

namespace lmig::testing_guest {

inline constexpr uint64_t kCodeAddr = 0x1000;

// Prints "Hi" on COM1, then resets through the i8042.
inline const std::vector<uint8_t> kHelloReset = {
    0xBA, 0xF8, 0x03,  // mov dx, 0x3f8
    0xB0, 'H', 0xEE,   // mov al, 'H'; out dx, al
    0xB0, 'i', 0xEE,   // mov al, 'i'; out dx, al
    0xB0, 0xFE,        // mov al, 0xfe
    0xE6, 0x64,        // out 0x64, al
    0xF4,              // hlt
};

// Writes one byte to pages 0x5 and 0x7 and 0x30 (0x30000 via ES), then resets.
inline const std::vector<uint8_t> kWritePages = {
    0xC6, 0x06, 0x00, 0x50, 0x11,  // mov byte [0x5000], 0x11
    0xC6, 0x06, 0x08, 0x70, 0x22,  // mov byte [0x7008], 0x22
    0xB8, 0x00, 0x30,              // mov ax, 0x3000
    0x8E, 0xC0,                    // mov es, ax
    0x26, 0xC6, 0x06, 0x10, 0x00, 0x33,  // mov byte es:[0x0010], 0x33  (0x30010)
    0xB0, 0xFE, 0xE6, 0x64,        // reset
    0xF4,
};

// Prints 40 digits "0123456701234567..." with a delay loop between them, then resets.
inline const std::vector<uint8_t> kCounter = {
    0xBA, 0xF8, 0x03,  // 0: mov dx, 0x3f8
    0x31, 0xC9,        // 3: xor cx, cx
    0x88, 0xC8,        // 5: mov al, cl
    0x24, 0x07,        // 7: and al, 7
    0x04, 0x30,        // 9: add al, '0'
    0xEE,              // 11: out dx, al
    0xBB, 0xD0, 0x07,  // 12: mov bx, 2000
    0x4B,              // 15: dec bx
    0x75, 0xFD,        // 16: jnz 15
    0x41,              // 18: inc cx
    0x83, 0xF9, 0x28,  // 19: cmp cx, 40
    0x75, 0xED,        // 22: jne 5
    0xB0, 0xFE,        // 24: mov al, 0xfe
    0xE6, 0x64,        // 26: out 0x64, al
    0xF4,              // 28: hlt
};

inline std::string CounterOutput() {
  std::string s;
  for (int i = 0; i < 40; ++i) {
    s.push_back(static_cast<char>('0' + (i & 7)));
  }
  return s;
}

// Loads CODE at kCodeAddr and points vCPU 0 at it in real mode.
inline absl::Status LoadRealMode(Machine& m, const std::vector<uint8_t>& code) {
  std::memcpy(m.memory().base() + kCodeAddr, code.data(), code.size());
  ASSIGN_OR_RETURN(kvm_sregs s, m.vcpu(0).GetSregs());
  s.cs.base = 0;
  s.cs.selector = 0;
  RETURN_IF_ERROR(m.vcpu(0).SetSregs(s));
  kvm_regs r{};
  r.rip = kCodeAddr;
  r.rflags = 2;
  return m.vcpu(0).SetRegs(r);
}

// Collects console output until at least AT_LEAST bytes have come (or 10 s have passed).
inline std::string TakeOutput(ConsoleBuffer& console, size_t at_least) {
  std::string out;
  for (int i = 0; i < 2000 && out.size() < at_least; ++i) {
    out += console.Take();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return out;
}

// Waits until the machine stops (or TIMEOUT_MS passes); returns whether it stopped.
inline bool WaitStopped(Machine& m, int timeout_ms) {
  pollfd p{m.stop_fd(), POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

// A test VM: its console, the machine, and (as a destination) the receiver's view of it.
struct Vm {
  std::unique_ptr<ConsoleBuffer> console;
  std::unique_ptr<Machine> machine;
  std::unique_ptr<MachineVm> incoming;
};

inline absl::StatusOr<Machine*> CreateVm(Vm& vm, uint64_t mem, int cpus) {
  ASSIGN_OR_RETURN(vm.console, ConsoleBuffer::Create());
  MachineConfig c;
  c.mem_size = mem;
  c.num_cpus = cpus;
  ASSIGN_OR_RETURN(vm.machine, Machine::Create(c, vm.console.get()));
  return vm.machine.get();
}

// kCounter with a delay loop ten times as long per character (20000 iterations): the guest
// must outlast a migration (dry-run pauses included) on a loaded 2-core host, or it ends on
// the source and the destination has nothing left to run.
inline std::vector<uint8_t> SlowCounter() {
  std::vector<uint8_t> code = kCounter;
  code[13] = 0x20;  // mov bx, 0x4e20
  code[14] = 0x4e;
  return code;
}

}  // namespace lmig::testing_guest
