// Port-I/O bus: routes KVM_EXIT_IO accesses to the device that owns the port. Devices are
// called on vCPU threads and lock themselves; unclaimed ports read as 0xff (no device).
#pragma once

#include <cstdint>
#include <vector>

namespace lmig {

class PioDevice {
 public:
  virtual ~PioDevice() = default;
  // OFFSET is relative to the device's base port; DATA holds SIZE bytes (1, 2 or 4).
  virtual void PioRead(uint16_t offset, uint8_t* data, uint32_t size) = 0;
  virtual void PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) = 0;
};

class PioBus {
 public:
  // DEVICE (not owned) answers ports [BASE, BASE+LEN).
  void Register(uint16_t base, uint16_t len, PioDevice* device) {
    ranges_.push_back({base, len, device});
  }
  void Read(uint16_t port, uint8_t* data, uint32_t size) const;
  void Write(uint16_t port, const uint8_t* data, uint32_t size) const;

 private:
  struct Range {
    uint16_t base;
    uint16_t len;
    PioDevice* device;
  };
  const Range* Find(uint16_t port) const;
  std::vector<Range> ranges_;
};

}  // namespace lmig
