#include "src/arch/x86_64/boot.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/arch/x86_64/acpi.h"
#include "src/arch/x86_64/cpu.h"
#include "src/arch/x86_64/mptable.h"
#include "src/base/file.h"

namespace lmig::x86 {
namespace {

constexpr uint64_t kSetupHeaderOffset = 0x1f1;
constexpr uint16_t kBootFlag = 0xaa55;
constexpr uint32_t kHdrSMagic = 0x53726448;  // "HdrS"
constexpr uint8_t kLoadedHigh = 0x01;
constexpr uint8_t kCanUseHeap = 0x80;
constexpr uint16_t kXlfKernel64 = 0x01;

uint64_t AlignDown(uint64_t v, uint64_t a) { return v & ~(a - 1); }

}  // namespace

bool BzImage::Supports64BitEntry() const {
  return protocol >= 0x020c && (xloadflags & kXlfKernel64) != 0;
}

absl::StatusOr<BzImage> ParseBzImage(std::span<const uint8_t> image) {
  if (image.size() < 0x1000) {
    return absl::InvalidArgumentError(
        absl::StrFormat("not a bzImage: only %d bytes", image.size()));
  }
  setup_header hdr{};
  const size_t hdr_len = std::min<size_t>(sizeof(hdr), 0x202 + image[0x201] - kSetupHeaderOffset);
  std::memcpy(&hdr, image.data() + kSetupHeaderOffset, hdr_len);
  if (hdr.boot_flag != kBootFlag) {
    return absl::InvalidArgumentError(
        absl::StrFormat("not a bzImage: boot flag at 0x1fe is 0x%04x, want 0xaa55",
                        uint16_t{hdr.boot_flag}));  // a copy: the field is packed
  }
  if (hdr.header != kHdrSMagic) {
    return absl::InvalidArgumentError(
        absl::StrFormat("not a bzImage: no \"HdrS\" magic at 0x202 (found 0x%08x)",
                        uint32_t{hdr.header}));
  }
  if (hdr.version < 0x0206) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "boot protocol %d.%02d is too old: 2.06 or newer is required", hdr.version >> 8,
        hdr.version & 0xff));
  }
  if ((hdr.loadflags & kLoadedHigh) == 0) {
    return absl::InvalidArgumentError("zImage (not loaded high) is not supported");
  }
  BzImage k;
  k.header = hdr;
  k.protocol = hdr.version;
  k.setup_sects = hdr.setup_sects == 0 ? 4 : hdr.setup_sects;
  k.loadflags = hdr.loadflags;
  k.xloadflags = hdr.version >= 0x020c ? hdr.xloadflags : 0;
  k.code32_start = hdr.code32_start;
  k.initrd_addr_max = hdr.initrd_addr_max;
  k.cmdline_size = hdr.cmdline_size;
  k.init_size = hdr.version >= 0x020a ? hdr.init_size : 0;
  k.payload_offset = (uint64_t{k.setup_sects} + 1) * 512;
  if (k.payload_offset >= image.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "truncated bzImage: setup_sects=%d but the file has %d bytes", k.setup_sects,
        image.size()));
  }
  k.payload_size = image.size() - k.payload_offset;
  if (k.init_size < k.payload_size) {
    k.init_size = static_cast<uint32_t>(k.payload_size);
  }
  return k;
}

std::vector<E820Entry> BuildE820(const RamLayout& ram) {
  std::vector<E820Entry> e;
  e.push_back({0, kEbdaStart, kE820Ram});
  e.push_back({kEbdaStart, kVgaStart - kEbdaStart, kE820Reserved});
  e.push_back({kMbbiosStart, kHighMemoryStart - kMbbiosStart, kE820Reserved});
  if (ram.low_size > kHighMemoryStart) {
    e.push_back({kHighMemoryStart, ram.low_size - kHighMemoryStart, kE820Ram});
  }
  if (ram.high_size > 0) {
    e.push_back({k4GiB, ram.high_size, kE820Ram});
  }
  return e;
}

uint64_t MinimumMemory(const BzImage& k) {
  // The decompressed kernel needs [load, load + init_size); leave 32 MiB for the initramfs
  // and early allocations.
  return kKernelStart + k.init_size + (32ull << 20);
}

absl::StatusOr<uint64_t> PlaceInitrd(const BzImage& k, const RamLayout& ram, uint64_t size) {
  const uint64_t kernel_end = kKernelStart + k.init_size;
  const uint64_t max_end = std::min<uint64_t>(ram.low_end(), uint64_t{k.initrd_addr_max} + 1);
  if (kInitrdPreferred >= kernel_end && kInitrdPreferred + size <= max_end) {
    return kInitrdPreferred;
  }
  if (size > max_end) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "initrd of %d bytes does not fit below 0x%x", size, max_end));
  }
  const uint64_t addr = AlignDown(max_end - size, kPageSize);
  if (addr < kernel_end) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "initrd of %d MiB does not fit between the kernel (ends at 0x%x) and 0x%x: "
        "give the guest more memory",
        size >> 20, kernel_end, max_end));
  }
  return addr;
}

boot_params BuildBootParams(const BzImage& k, const std::vector<E820Entry>& e820,
                            uint64_t initrd_addr, uint64_t initrd_size) {
  boot_params bp{};
  bp.hdr = k.header;
  bp.hdr.type_of_loader = 0xff;  // undefined loader
  bp.hdr.loadflags = static_cast<uint8_t>(bp.hdr.loadflags | kCanUseHeap);
  bp.hdr.heap_end_ptr = 0xfe00;  // boot.rst: end of setup heap, relative to the setup start
  bp.hdr.vid_mode = 0xffff;      // "normal"
  bp.hdr.cmd_line_ptr = static_cast<uint32_t>(kCmdlineStart);
  bp.hdr.ramdisk_image = static_cast<uint32_t>(initrd_addr);
  bp.hdr.ramdisk_size = static_cast<uint32_t>(initrd_size);
  bp.ext_ramdisk_image = static_cast<uint32_t>(initrd_addr >> 32);
  bp.ext_ramdisk_size = static_cast<uint32_t>(initrd_size >> 32);
  size_t n = 0;
  for (const E820Entry& e : e820) {
    if (n == E820_MAX_ENTRIES_ZEROPAGE) {
      break;
    }
    bp.e820_table[n].addr = e.addr;
    bp.e820_table[n].size = e.size;
    bp.e820_table[n].type = e.type;
    ++n;
  }
  bp.e820_entries = static_cast<uint8_t>(n);
  return bp;
}

absl::StatusOr<BootEntry> LoadLinux(const BootConfig& boot, std::span<uint8_t> low,
                                    const RamLayout& ram, int num_cpus) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> image, ReadFile(boot.kernel, "kernel"));
  auto parsed = ParseBzImage(image);
  if (!parsed.ok()) {
    return Annotate(parsed.status(), absl::StrCat("kernel ", boot.kernel));
  }
  const BzImage& k = *parsed;
  if (ram.total() < MinimumMemory(k)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--mem %dMiB is too small for kernel %s: it needs at least %dMiB", ram.total() >> 20,
        boot.kernel, (MinimumMemory(k) + (1 << 20) - 1) >> 20));
  }
  std::memcpy(&low[kKernelStart], image.data() + k.payload_offset, k.payload_size);

  uint64_t initrd_addr = 0, initrd_size = 0;
  if (!boot.initrd.empty()) {
    ASSIGN_OR_RETURN(std::vector<uint8_t> initrd, ReadFile(boot.initrd, "initrd"));
    auto addr = PlaceInitrd(k, ram, initrd.size());
    if (!addr.ok()) {
      return Annotate(addr.status(), absl::StrCat("initrd ", boot.initrd));
    }
    initrd_addr = *addr;
    initrd_size = initrd.size();
    std::memcpy(&low[initrd_addr], initrd.data(), initrd.size());
  }
  if (boot.cmdline.size() + 1 > std::min<uint64_t>(k.cmdline_size + 1, kCmdlineMax)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--cmdline is %d bytes; the kernel accepts at most %d", boot.cmdline.size(),
        k.cmdline_size));
  }
  std::memcpy(&low[kCmdlineStart], boot.cmdline.c_str(), boot.cmdline.size() + 1);

  const boot_params bp = BuildBootParams(k, BuildE820(ram), initrd_addr, initrd_size);
  std::memcpy(&low[kBootParamsStart], &bp, sizeof(bp));

  ASSIGN_OR_RETURN(MpTables mp, BuildMpTables(num_cpus));
  std::memcpy(&low[kEbdaStart], mp.floating_pointer.data(), mp.floating_pointer.size());
  static_assert(kAcpiTablesStart > kMpConfigStart);
  if (mp.config_table.size() > kAcpiTablesStart - kMpConfigStart) {
    return absl::InternalError("MP configuration table overlaps the ACPI tables");
  }
  std::memcpy(&low[kMpConfigStart], mp.config_table.data(), mp.config_table.size());
  const std::vector<uint8_t> acpi = BuildAcpiTables(kAcpiTablesStart, num_cpus);
  std::memcpy(&low[kAcpiTablesStart], acpi.data(), acpi.size());
  const uint16_t ebda_segment = kEbdaStart >> 4;
  std::memcpy(&low[kBdaEbdaPointer], &ebda_segment, 2);

  BootEntry entry;
  entry.long_mode = k.Supports64BitEntry();
  WriteBootGdt(low, entry.long_mode);
  if (entry.long_mode) {
    WriteBootPageTables(low);
  }
  entry.rip = entry.long_mode ? kKernelStart + kKernel64EntryOffset : k.code32_start;
  return entry;
}

}  // namespace lmig::x86
