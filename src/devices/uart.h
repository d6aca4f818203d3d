// 16550A UART (COM1 at 0x3f8, IRQ 4): transmit, receive with a FIFO, interrupts (receive data,
// THR empty, line status, modem status), divisor latch, scratch and loopback, as Linux's 8250
// driver probes and drives it. Transmitted bytes go to an output sink; received bytes come from
// EnqueueInput (the reactor). The interrupt line is a level: raised while an enabled interrupt
// is pending (as QEMU's serial model does).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/devices/pio_bus.h"

namespace lmig {

// Every guest-visible register, for migration.
struct UartState {
  uint8_t ier = 0;
  uint8_t iir = 0x01;
  uint8_t lcr = 0;
  uint8_t mcr = 0;
  uint8_t lsr = 0x60;
  uint8_t msr = 0xb0;
  uint8_t scr = 0;
  uint8_t dll = 0x0c;
  uint8_t dlm = 0;
  uint8_t fcr = 0;
  uint8_t thr_ipending = 0;
  std::vector<uint8_t> rx;

  std::vector<uint8_t> Serialize() const;
  static absl::StatusOr<UartState> Deserialize(std::span<const uint8_t> bytes);
};

class Uart : public PioDevice {
 public:
  using OutputFn = std::function<void(uint8_t)>;
  using IrqFn = std::function<void(bool level)>;

  Uart(OutputFn out, IrqFn irq) : out_(std::move(out)), irq_(std::move(irq)) {}

  void PioRead(uint16_t offset, uint8_t* data, uint32_t size) override;
  void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) override;

  // Queues bytes typed by the user for the guest to read; returns how many were accepted
  // (the receive queue holds kRxCapacity bytes).
  size_t EnqueueInput(std::span<const uint8_t> bytes);
  static constexpr size_t kRxCapacity = 4096;

  UartState Save() const;
  void Restore(const UartState& s);
  // "uart: ier=.. iir=.. lsr=.. mcr=.. thr_pending=0|1 rx=N irq=0|1": the registers a stuck
  // console is judged by.
  std::string Describe() const;

 private:
  uint8_t ReadReg(uint16_t offset);
  void WriteReg(uint16_t offset, uint8_t v);
  void UpdateIrq();
  void Receive(uint8_t byte);
  uint8_t ModemStatus() const;

  mutable std::mutex mu_;
  UartState s_;
  std::deque<uint8_t> rx_;
  bool irq_level_ = false;
  OutputFn out_;
  IrqFn irq_;
};

// i8042 keyboard controller: only what Linux needs to reboot (`reboot=k`: 0xfe on port 0x64
// pulses the CPU reset line). Status reads 0: no data, input buffer empty.
class I8042 : public PioDevice {
 public:
  explicit I8042(std::function<void()> reset) : reset_(std::move(reset)) {}
  void PioRead(uint16_t offset, uint8_t* data, uint32_t size) override;
  void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) override;

 private:
  std::function<void()> reset_;
};

// MC146818 CMOS RTC (ports 0x70/0x71): the host's UTC time in BCD, never "update in progress".
class Cmos : public PioDevice {
 public:
  void PioRead(uint16_t offset, uint8_t* data, uint32_t size) override;
  void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) override;

 private:
  std::mutex mu_;
  uint8_t index_ = 0;
};

}  // namespace lmig
