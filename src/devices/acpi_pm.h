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
  class Events : public PioDevice {
   public:
    explicit Events(AcpiPm* pm) : pm_(pm) {}
    void PioRead(uint16_t offset, uint8_t* data, uint32_t size) override;
    void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) override;

   private:
    AcpiPm* pm_;
  };
  class Control : public PioDevice {
   public:
    explicit Control(AcpiPm* pm) : pm_(pm) {}
    void PioRead(uint16_t offset, uint8_t* data, uint32_t size) override;
    void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) override;

   private:
    AcpiPm* pm_;
  };

  std::mutex mu_;
  uint16_t status_ = 0;   // PM1_STS: write 1 to clear
  uint16_t enable_ = 0;   // PM1_EN
  uint16_t control_reg_ = 0;  // PM1_CNT (SCI_EN always reads 1)
  std::function<void()> power_off_;
  Events events_{this};
  Control control_{this};
};

}  // namespace lmig
