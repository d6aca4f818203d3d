// Little-endian byte writer for firmware tables (MP tables, ACPI) built in host memory and
// copied into the guest.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace lmig::x86 {

class TableWriter {
 public:
  void U8(uint8_t v) { b_.push_back(v); }
  void U16(uint16_t v) { U8(v & 0xff), U8(v >> 8); }
  void U32(uint32_t v) { U16(v & 0xffff), U16(v >> 16); }
  void U64(uint64_t v) { U32(v & 0xffffffff), U32(v >> 32); }
  // S padded with spaces (or cut) to exactly N bytes.
  void Str(const char* s, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      U8(i < std::strlen(s) ? static_cast<uint8_t>(s[i]) : ' ');
    }
  }
  void Bytes(const std::vector<uint8_t>& v) { b_.insert(b_.end(), v.begin(), v.end()); }
  void Patch32(size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) b_[at + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  size_t size() const { return b_.size(); }
  std::vector<uint8_t>& bytes() { return b_; }

 private:
  std::vector<uint8_t> b_;
};

// Sum of BYTES[from, to) modulo 256 (0 for a valid MP or ACPI structure).
inline uint8_t ByteSum(const std::vector<uint8_t>& b, size_t from = 0, size_t to = SIZE_MAX) {
  uint8_t s = 0;
  for (size_t i = from; i < b.size() && i < to; ++i) {
    s = static_cast<uint8_t>(s + b[i]);
  }
  return s;
}

// Sets B[AT] so that B[from, to) sums to 0.
inline void SetChecksum(std::vector<uint8_t>& b, size_t at, size_t from = 0,
                        size_t to = SIZE_MAX) {
  b[at] = 0;
  b[at] = static_cast<uint8_t>(-ByteSum(b, from, to));
}

}  // namespace lmig::x86
