#include "src/devices/acpi_pm.h"

#include <cstring>

#include "src/arch/x86_64/acpi.h"

namespace lmig {
namespace {

// Reads or writes the SIZE bytes at byte OFFSET of a 16-bit register REG (little endian).
void ReadBytes(uint16_t reg, uint16_t offset, uint8_t* data, uint32_t size) {
  std::memset(data, 0, size);
  for (uint32_t i = 0; i < size && offset + i < 2; ++i) {
    data[i] = static_cast<uint8_t>(reg >> (8 * (offset + i)));
  }
}

uint16_t Merge(uint16_t reg, uint16_t offset, const uint8_t* data, uint32_t size) {
  for (uint32_t i = 0; i < size && offset + i < 2; ++i) {
    const int shift = 8 * (offset + i);
    reg = static_cast<uint16_t>((reg & ~(0xff << shift)) | (data[i] << shift));
  }
  return reg;
}

}  // namespace

void AcpiPm::Block::PioRead(uint16_t offset, uint8_t* data, uint32_t size) {
  std::lock_guard<std::mutex> lock(pm_->mu_);
  if (control_) {
    ReadBytes(pm_->control_reg_ | x86::kPm1SciEnable, offset, data, size);
  } else if (offset < 2) {
    ReadBytes(pm_->status_, offset, data, size);
  } else {
    ReadBytes(pm_->enable_, offset - 2, data, size);
  }
}

void AcpiPm::Block::PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) {
  bool off = false;
  {
    std::lock_guard<std::mutex> lock(pm_->mu_);
    if (!control_) {
      if (offset < 2) {
        pm_->status_ &= static_cast<uint16_t>(~Merge(0, offset, data, size));
      } else {
        pm_->enable_ = Merge(pm_->enable_, offset - 2, data, size);
      }
      return;
    }
    const uint16_t v = Merge(pm_->control_reg_, offset, data, size);
    const uint16_t type = (v >> x86::kPm1SleepTypeShift) & 7;
    off = (v & x86::kPm1SleepEnable) && type == x86::kAcpiS5SleepType;
    // SLP_EN is write-only: it reads back as 0.
    pm_->control_reg_ = static_cast<uint16_t>(v & ~x86::kPm1SleepEnable);
  }
  if (off && pm_->power_off_) {
    pm_->power_off_();
  }
}

}  // namespace lmig
