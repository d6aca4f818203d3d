#include "src/devices/pio_bus.h"

#include <cstring>

namespace lmig {

const PioBus::Range* PioBus::Find(uint16_t port) const {
  for (const Range& r : ranges_) {
    if (port >= r.base && port < r.base + r.len) {
      return &r;
    }
  }
  return nullptr;
}

void PioBus::Read(uint16_t port, uint8_t* data, uint32_t size) const {
  if (const Range* r = Find(port)) {
    r->device->PioRead(static_cast<uint16_t>(port - r->base), data, size);
    return;
  }
  std::memset(data, 0xff, size);
}

void PioBus::Write(uint16_t port, const uint8_t* data, uint32_t size) const {
  if (const Range* r = Find(port)) {
    r->device->PioWrite(static_cast<uint16_t>(port - r->base), data, size);
  }
}

}  // namespace lmig
