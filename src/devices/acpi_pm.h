// ACPI fixed-hardware power management: the PM1a event block (status, enable) and control
// block the FADT describes (src/arch/x86_64/acpi.h). Writing SLP_TYP=5 (S5) with SLP_EN to the
// control register powers the machine off. The SCI is never raised: there are no events.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>

#include "src/devices/pio_bus.h"

namespace lmig {

// Registered twice: once at the PM1a event block (4 ports), once at the control block (2).
class AcpiPm {
 public:
  explicit AcpiPm(std::function<void()> power_off) : power_off_(std::move(power_off)) {}

  PioDevice* event_block() { return &events_; }
  PioDevice* control_block() { return &control_; }

 private:
  // One register block on the port bus; forwards to the AcpiPm's registers.
  class Block : public PioDevice {
   public:
    Block(AcpiPm* pm, bool control) : pm_(pm), control_(control) {}
    void PioRead(uint16_t offset, uint8_t* data, uint32_t size) override;
    void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) override;

   private:
    AcpiPm* pm_;
    bool control_;
  };

  std::mutex mu_;
  uint16_t status_ = 0;   // PM1_STS: write 1 to clear
  uint16_t enable_ = 0;   // PM1_EN
  uint16_t control_reg_ = 0;  // PM1_CNT (SCI_EN always reads 1)
  std::function<void()> power_off_;
  Block events_{this, false};
  Block control_{this, true};
};

}  // namespace lmig
