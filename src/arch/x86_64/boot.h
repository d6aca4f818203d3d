// Linux x86 boot protocol (Documentation/arch/x86/boot.rst): bzImage parsing, the zero page,
// the e820 map and the command line, and LoadLinux, which lays a kernel and initramfs out in
// guest memory with the MP and ACPI tables. Functions over byte spans (LoadLinux also reads
// the files), unit-tested without KVM.
#pragma once

#include <asm/bootparam.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/arch/x86_64/layout.h"

namespace lmig::x86 {

// What the loader needs from a bzImage's setup header.
struct BzImage {
  uint16_t protocol = 0;          // e.g. 0x020f
  uint8_t setup_sects = 0;        // 0 means 4
  uint8_t loadflags = 0;
  uint16_t xloadflags = 0;
  uint32_t code32_start = 0;
  uint32_t initrd_addr_max = 0;
  uint32_t cmdline_size = 0;
  uint32_t init_size = 0;
  uint64_t payload_offset = 0;    // file offset of the protected-mode kernel
  uint64_t payload_size = 0;
  setup_header header{};          // the header as in the file, to copy into the zero page
  // 64-bit entry is allowed (protocol >= 2.12 and XLF_KERNEL_64).
  bool Supports64BitEntry() const;
};

// Parses and validates IMAGE (the whole file). Errors say which check failed, with the value
// found: not a bzImage (boot flag / "HdrS"), protocol < 2.06, not loadable high.
absl::StatusOr<BzImage> ParseBzImage(std::span<const uint8_t> image);

inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;

// One e820 entry: [addr, addr+size) of TYPE (kE820Ram or kE820Reserved).
struct E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};

// The design's e820 map for RAM (see layout.h).
std::vector<E820Entry> BuildE820(const RamLayout& ram);

// Where the initramfs of SIZE bytes goes: kInitrdPreferred when it fits, else as high as it fits
// below both the end of low RAM and initrd_addr_max, and above the kernel's init_size.
absl::StatusOr<uint64_t> PlaceInitrd(const BzImage& k, const RamLayout& ram, uint64_t size);

// Minimum guest memory for this kernel: the kernel's decompression footprint plus slack.
uint64_t MinimumMemory(const BzImage& k);

// Fills the zero page for K with the e820 map, the command line at kCmdlineStart and the
// initramfs at INITRD_ADDR/INITRD_SIZE (0 size: none).
boot_params BuildBootParams(const BzImage& k, const std::vector<E820Entry>& e820,
                            uint64_t initrd_addr, uint64_t initrd_size);

// What to boot.
struct BootConfig {
  std::string kernel;
  std::string initrd;  // may be empty
  std::string cmdline;
};

// Where the boot vCPU starts: RIP, in 64-bit mode (with the boot page tables) or 32-bit
// protected mode.
struct BootEntry {
  uint64_t rip = 0;
  bool long_mode = false;
};

// Reads BOOT's kernel and initramfs and writes them into LOW (guest RAM from address 0, laid
// out as RAM says), with the command line, the zero page, MP and ACPI tables for NUM_CPUS,
// the boot GDT and, for a 64-bit entry, the boot page tables. Errors name the file or flag:
// "kernel /x: not a bzImage ...", "--mem 64MiB is too small for kernel /x ...".
absl::StatusOr<BootEntry> LoadLinux(const BootConfig& boot, std::span<uint8_t> low,
                                    const RamLayout& ram, int num_cpus);

}  // namespace lmig::x86
