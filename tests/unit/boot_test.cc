#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "src/arch/x86_64/acpi.h"
#include "src/arch/x86_64/boot.h"
#include "src/arch/x86_64/cpu.h"
#include "src/arch/x86_64/layout.h"
#include "src/arch/x86_64/mptable.h"
#include "src/arch/x86_64/table_writer.h"

namespace lmig::x86 {
namespace {

// A synthetic bzImage: a setup header as Documentation/arch/x86/boot.rst lays it out.
std::vector<uint8_t> FakeBzImage(uint16_t version = 0x020f, uint8_t setup_sects = 39,
                                 size_t payload = 0x10000) {
  std::vector<uint8_t> img((setup_sects + 1) * 512 + payload, 0xcc);
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(&img[at], &v, 2); };
  auto put32 = [&](size_t at, uint32_t v) { std::memcpy(&img[at], &v, 4); };
  img[0x1f1] = setup_sects;
  put16(0x1fe, 0xaa55);
  img[0x201] = 0x6a;  // jump: header ends at 0x202 + 0x6a = 0x26c
  put32(0x202, 0x53726448);
  put16(0x206, version);
  img[0x211] = 0x01;  // LOADED_HIGH
  put32(0x214, 0x100000);
  put32(0x22c, 0x7fffffff);  // initrd_addr_max
  put32(0x238, 2047);        // cmdline_size
  put16(0x236, 0x7f);        // xloadflags
  put32(0x260, 0x3f98000);   // init_size
  return img;
}

TEST(BzImage, ParsesTheSetupHeader) {
  auto k = ParseBzImage(FakeBzImage());
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->protocol, 0x020f);
  EXPECT_EQ(k->payload_offset, 40u * 512);
  EXPECT_EQ(k->init_size, 0x3f98000u);
  EXPECT_EQ(k->initrd_addr_max, 0x7fffffffu);
  EXPECT_TRUE(k->Supports64BitEntry());
}

TEST(BzImage, OldProtocolGetsNo64BitEntry) {
  auto k = ParseBzImage(FakeBzImage(0x020a));
  ASSERT_TRUE(k.ok());
  EXPECT_FALSE(k->Supports64BitEntry());
}

TEST(BzImage, RejectsWhatIsNotABzImage) {
  std::vector<uint8_t> elf(0x4000, 0);
  std::memcpy(elf.data(), "\x7f" "ELF", 4);
  EXPECT_THAT(std::string(ParseBzImage(elf).status().message()),
              testing::HasSubstr("boot flag"));
  auto img = FakeBzImage();
  img[0x202] = 'X';
  EXPECT_THAT(std::string(ParseBzImage(img).status().message()), testing::HasSubstr("HdrS"));
  EXPECT_THAT(std::string(ParseBzImage(FakeBzImage(0x0204)).status().message()),
              testing::HasSubstr("2.04 is too old"));
  EXPECT_FALSE(ParseBzImage(std::vector<uint8_t>(100, 0)).ok());
}

// Files holding given bytes, in a folder of their own that goes with the test.
class TempFiles {
 public:
  TempFiles() {
    char dir[] = "/tmp/lmig-boot-XXXXXX";
    dir_ = mkdtemp(dir);
  }
  ~TempFiles() { std::filesystem::remove_all(dir_); }
  std::string Write(const std::vector<uint8_t>& bytes, const char* name) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path;
  }

 private:
  std::string dir_;
};

TEST(LoadLinux, LaysOutKernelInitrdCmdlineAndTablesAndSaysWhereToStart) {
  std::vector<uint8_t> image = FakeBzImage();
  const size_t payload_at = 40 * 512;
  std::memcpy(&image[payload_at], "KERNEL", 6);
  TempFiles files;
  const std::string kernel = files.Write(image, "bzImage");
  const std::string initrd = files.Write(std::vector<uint8_t>(5000, 0x5a), "initrd");
  const RamLayout ram = RamLayoutFor(128ull << 20);
  std::vector<uint8_t> mem(ram.low_size, 0);
  auto entry = LoadLinux({kernel, initrd, "console=ttyS0 quiet"}, mem, ram, 2);
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_TRUE(entry->long_mode);
  EXPECT_EQ(entry->rip, kKernelStart + kKernel64EntryOffset);
  EXPECT_EQ(std::memcmp(&mem[kKernelStart], "KERNEL", 6), 0);
  EXPECT_STREQ(reinterpret_cast<const char*>(&mem[kCmdlineStart]), "console=ttyS0 quiet");
  boot_params bp;
  std::memcpy(&bp, &mem[kBootParamsStart], sizeof(bp));
  ASSERT_EQ(bp.hdr.ramdisk_size, 5000u);
  EXPECT_EQ(mem[bp.hdr.ramdisk_image], 0x5a);
  EXPECT_EQ(mem[bp.hdr.ramdisk_image + 4999], 0x5a);
  EXPECT_EQ(bp.hdr.cmd_line_ptr, kCmdlineStart);
  EXPECT_EQ(std::memcmp(&mem[kAcpiTablesStart], "RSD PTR ", 8), 0);
  EXPECT_EQ(std::memcmp(&mem[kEbdaStart], "_MP_", 4), 0);
}

TEST(LoadLinux, BadInputIsNamed) {
  TempFiles files;
  const RamLayout ram = RamLayoutFor(128ull << 20);
  std::vector<uint8_t> mem(ram.low_size, 0);
  auto missing = LoadLinux({"/nonexistent/bzImage", "", ""}, mem, ram, 1);
  EXPECT_THAT(std::string(missing.status().message()),
              testing::HasSubstr("kernel /nonexistent/bzImage: No such file"));
  const std::string elf = files.Write(std::vector<uint8_t>(0x4000, 0x7f), "vmlinux");
  EXPECT_THAT(std::string(LoadLinux({elf, "", ""}, mem, ram, 1).status().message()),
              testing::HasSubstr("kernel " + elf + ": not a bzImage"));
  const std::string kernel = files.Write(FakeBzImage(), "bzImage");
  const RamLayout tiny = RamLayoutFor(32ull << 20);
  std::vector<uint8_t> small(tiny.low_size, 0);
  EXPECT_THAT(std::string(LoadLinux({kernel, "", ""}, small, tiny, 1).status().message()),
              testing::HasSubstr("--mem 32MiB is too small for kernel"));
  EXPECT_THAT(std::string(LoadLinux({kernel, "", std::string(3000, 'x')}, mem, ram, 1)
                              .status()
                              .message()),
              testing::HasSubstr("--cmdline is 3000 bytes; the kernel accepts at most 2047"));
}

TEST(E820, SmallGuestIsOneLowRegion) {
  const auto e = BuildE820(RamLayoutFor(512ull << 20));
  ASSERT_EQ(e.size(), 4u);
  EXPECT_EQ(e[0].addr, 0u);
  EXPECT_EQ(e[0].size, kEbdaStart);
  EXPECT_EQ(e[0].type, kE820Ram);
  EXPECT_EQ(e[1].type, kE820Reserved);  // EBDA
  EXPECT_EQ(e[2].addr, kMbbiosStart);
  EXPECT_EQ(e[3].addr, kHighMemoryStart);
  EXPECT_EQ(e[3].addr + e[3].size, 512ull << 20);
}

TEST(E820, MemoryAbove3GiBContinuesAbove4GiB) {
  const auto e = BuildE820(RamLayoutFor(8ull << 30));
  ASSERT_EQ(e.size(), 5u);
  EXPECT_EQ(e[3].addr + e[3].size, kMmioHoleStart);
  EXPECT_EQ(e[4].addr, k4GiB);
  EXPECT_EQ(e[4].size, (8ull << 30) - kMmioHoleStart);
  uint64_t ram = 0;
  for (const auto& x : e) {
    ram += x.type == kE820Ram ? x.size : 0;
  }
  EXPECT_EQ(ram, (8ull << 30) - kHighMemoryStart + kEbdaStart);
}

TEST(Initrd, PreferredAddressOrHighestThatFits) {
  auto k = *ParseBzImage(FakeBzImage());
  EXPECT_EQ(*PlaceInitrd(k, RamLayoutFor(512ull << 20), 8 << 20), kInitrdPreferred);
  // 300 MiB does not fit at 0x0f000000 in 512 MiB: it goes as high as it fits.
  const uint64_t big = 300ull << 20;
  auto addr = PlaceInitrd(k, RamLayoutFor(512ull << 20), big);
  ASSERT_TRUE(addr.ok());
  EXPECT_EQ(*addr + big, 512ull << 20);
  EXPECT_EQ(*addr % kPageSize, 0u);
  // And not at all when it would overlap the kernel's init_size.
  EXPECT_FALSE(PlaceInitrd(k, RamLayoutFor(128ull << 20), 100ull << 20).ok());
}

TEST(BootParams, PointsAtCmdlineInitrdAndE820) {
  auto k = *ParseBzImage(FakeBzImage());
  const auto e820 = BuildE820(RamLayoutFor(1ull << 30));
  const boot_params bp = BuildBootParams(k, e820, 0x0f000000, 12345);
  EXPECT_EQ(bp.hdr.cmd_line_ptr, kCmdlineStart);
  EXPECT_EQ(bp.hdr.ramdisk_image, 0x0f000000u);
  EXPECT_EQ(bp.hdr.ramdisk_size, 12345u);
  EXPECT_EQ(bp.hdr.type_of_loader, 0xff);
  EXPECT_TRUE(bp.hdr.loadflags & 0x80);  // CAN_USE_HEAP
  EXPECT_EQ(bp.hdr.boot_flag, 0xaa55);
  EXPECT_EQ(bp.e820_entries, e820.size());
  EXPECT_EQ(uint64_t{bp.e820_table[3].addr}, kHighMemoryStart);  // a copy: packed
  EXPECT_EQ(sizeof(bp), 4096u);
}

TEST(MpTable, ChecksumsAndCountsAreValid) {
  for (int cpus : {1, 2, 8, 64}) {
    auto mp = BuildMpTables(cpus);
    ASSERT_TRUE(mp.ok());
    EXPECT_EQ(mp->floating_pointer.size(), 16u);
    EXPECT_EQ(MpChecksum(mp->floating_pointer), 0);
    EXPECT_EQ(MpChecksum(mp->config_table), 0);
    EXPECT_EQ(std::memcmp(mp->floating_pointer.data(), "_MP_", 4), 0);
    uint32_t ptr;
    std::memcpy(&ptr, &mp->floating_pointer[4], 4);
    EXPECT_EQ(ptr, kMpConfigStart);
    uint16_t len, count;
    std::memcpy(&len, &mp->config_table[4], 2);
    std::memcpy(&count, &mp->config_table[34], 2);
    EXPECT_EQ(len, mp->config_table.size());
    // CPUs + bus + IOAPIC + 15 ISA IRQs + 2 local interrupts.
    EXPECT_EQ(count, cpus + 1 + 1 + 15 + 2);
    EXPECT_EQ(mp->config_table.size(), 44u + cpus * 20 + (1 + 1 + 15 + 2) * 8);
    EXPECT_EQ(mp->config_table[44 + 3], 0x3);  // CPU 0: enabled + boot processor
  }
  EXPECT_FALSE(BuildMpTables(0).ok());
  EXPECT_FALSE(BuildMpTables(65).ok());
}

uint32_t Le32(const std::vector<uint8_t>& b, size_t at) {
  uint32_t v;
  std::memcpy(&v, &b[at], 4);
  return v;
}

uint64_t Le64(const std::vector<uint8_t>& b, size_t at) {
  uint64_t v;
  std::memcpy(&v, &b[at], 8);
  return v;
}

// Follows RSDP -> XSDT -> FADT -> DSDT as the guest does, checking every checksum.
TEST(Acpi, TablesChainFromTheRsdpWithValidChecksums) {
  constexpr uint64_t kBase = x86::kAcpiTablesStart;
  const std::vector<uint8_t> t = x86::BuildAcpiTables(kBase, 3);
  auto table_at = [&](uint64_t gpa, const char* sig) {
    const size_t off = gpa - kBase;
    EXPECT_LT(off, t.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(&t[off]), 4), sig);
    const uint32_t len = Le32(t, off + 4);
    EXPECT_LE(off + len, t.size());
    EXPECT_EQ(x86::ByteSum(t, off, off + len), 0) << sig;
    return off;
  };
  ASSERT_EQ(std::string(reinterpret_cast<const char*>(&t[0]), 8), "RSD PTR ");
  EXPECT_EQ(kBase % 16, 0u);  // the guest scans 16-byte boundaries
  EXPECT_GE(kBase, 0xe0000u);
  EXPECT_EQ(x86::ByteSum(t, 0, 20), 0);
  EXPECT_EQ(x86::ByteSum(t, 0, 36), 0);
  EXPECT_EQ(t[15], 2);  // revision: XSDT
  const size_t xsdt = table_at(Le64(t, 24), "XSDT");
  ASSERT_EQ(Le32(t, xsdt + 4), 36u + 16u);  // FADT, MADT
  const size_t fadt = table_at(Le64(t, xsdt + 36), "FACP");
  EXPECT_EQ(Le32(t, fadt + 4), 276u);
  EXPECT_EQ(t[fadt + 46], x86::kAcpiSciIrq);
  EXPECT_EQ(Le32(t, fadt + 48), 0u);  // no SMI command port: always in ACPI mode
  EXPECT_EQ(Le32(t, fadt + 56), x86::kAcpiPm1EventPort);
  EXPECT_EQ(Le32(t, fadt + 64), x86::kAcpiPm1ControlPort);
  EXPECT_EQ(t[fadt + 88], 4);  // PM1_EVT_LEN
  EXPECT_EQ(t[fadt + 89], 2);  // PM1_CNT_LEN
  EXPECT_EQ(Le32(t, fadt + 112) & (1u << 20), 0u);  // not hardware-reduced
  EXPECT_EQ(t[fadt + 109] & 2, 0);  // no i8042 for Linux to probe (reboot=k needs none)
  const size_t dsdt = table_at(Le64(t, fadt + 140), "DSDT");
  EXPECT_EQ(Le32(t, fadt + 40), Le64(t, fadt + 140));
  // Name (_S5, Package (4) { 5, 0, 0, 0 })
  const std::vector<uint8_t> s5 = {0x08, '_', 'S', '5', '_', 0x12, 0x07, 0x04, 0x0a, 0x05,
                                   0, 0, 0};
  EXPECT_TRUE(std::equal(s5.begin(), s5.end(), t.begin() + dsdt + 36));
  EXPECT_EQ(Le32(t, dsdt + 4), 36u + s5.size());
  // MADT: three enabled local APICs with ids 0..2, then the IOAPIC (id 3).
  const size_t madt = table_at(Le64(t, xsdt + 44), "APIC");
  EXPECT_EQ(Le32(t, madt + 36), x86::kLapicAddress);
  size_t e = madt + 44;
  for (int cpu = 0; cpu < 3; ++cpu, e += 8) {
    EXPECT_EQ(t[e], 0);
    EXPECT_EQ(t[e + 3], cpu);
    EXPECT_EQ(Le32(t, e + 4), 1u);
  }
  EXPECT_EQ(t[e], 1);
  EXPECT_EQ(t[e + 2], 3);
  EXPECT_EQ(Le32(t, e + 4), x86::kIoapicAddress);
  // The whole table fits below the end of the BIOS area even with the most vCPUs.
  EXPECT_LE(x86::kAcpiTablesStart + x86::BuildAcpiTables(kBase, x86::kMaxVcpus).size(),
            x86::kHighMemoryStart);
}

TEST(Cpuid, SetsApicIdsHypervisorBitAndTscDeadline) {
  std::vector<kvm_cpuid_entry2> in(3);
  in[0].function = 1;
  in[0].ebx = 0xff00ffff;
  in[1].function = 0xb;
  in[2].function = 0xd;
  in[2].index = 0;
  in[2].ebx = 576;
  in[2].ecx = 832;
  auto out = FilterCpuid(in, 5, 8, true);
  EXPECT_EQ(out[0].ebx >> 24, 5u);
  EXPECT_EQ((out[0].ebx >> 16) & 0xff, 8u);
  EXPECT_TRUE(out[0].ecx & (1u << 31));
  EXPECT_TRUE(out[0].ecx & (1u << 24));
  EXPECT_TRUE(out[0].edx & (1u << 28));
  EXPECT_EQ(out[1].edx, 5u);
  EXPECT_EQ(out[2].ebx, 832u);
  auto single = FilterCpuid(in, 0, 1, false);
  EXPECT_FALSE(single[0].ecx & (1u << 24));
  EXPECT_FALSE(single[0].edx & (1u << 28));
}

TEST(BootCpu, LongModeEntryState) {
  std::vector<uint8_t> mem(1 << 20);
  WriteBootPageTables(mem);
  uint64_t pml4, pd0_1;
  std::memcpy(&pml4, &mem[kPml4Start], 8);
  EXPECT_EQ(pml4, kPdptStart | 3);
  std::memcpy(&pd0_1, &mem[kPdStart + 8], 8);
  EXPECT_EQ(pd0_1, (2ull << 20) | 0x83);
  uint64_t last_pd_last;
  std::memcpy(&last_pd_last, &mem[kPdStart + 3 * 4096 + 511 * 8], 8);
  EXPECT_EQ(last_pd_last, ((4ull << 30) - (2ull << 20)) | 0x83);
  const kvm_sregs s = BootSregs(kvm_sregs{}, true);
  EXPECT_EQ(s.cs.selector, kBootCs);
  EXPECT_EQ(s.cs.l, 1);
  EXPECT_EQ(s.ds.selector, kBootDs);
  EXPECT_EQ(s.cr3, kPml4Start);
  EXPECT_TRUE(s.efer & (1 << 10));
  const kvm_regs r = BootRegs(kKernelStart + kKernel64EntryOffset);
  EXPECT_EQ(r.rip, 0x100200u);
  EXPECT_EQ(r.rsi, kBootParamsStart);
  const kvm_sregs p = BootSregs(kvm_sregs{}, false);
  EXPECT_EQ(p.cs.l, 0);
  EXPECT_EQ(p.cr0 & (1ull << 31), 0u);
}

}  // namespace
}  // namespace lmig::x86
