#include "src/devices/uart.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <ctime>

#include "absl/strings/str_format.h"

namespace lmig {
namespace {

// Register offsets.
constexpr uint16_t kData = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6,
                   kScr = 7;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kIerRdi = 0x01, kIerThri = 0x02, kIerRlsi = 0x04, kIerMsi = 0x08;
constexpr uint8_t kIirNoInt = 0x01, kIirMsi = 0x00, kIirThri = 0x02, kIirRdi = 0x04,
                  kIirRlsi = 0x06, kIirFifoEnabled = 0xc0;
constexpr uint8_t kLsrDr = 0x01, kLsrOe = 0x02, kLsrBi = 0x10, kLsrThre = 0x20,
                  kLsrTemt = 0x40, kLsrIntAny = 0x1e;
constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08,
                  kMcrLoop = 0x10;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80,
                  kMsrAnyDelta = 0x0f;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;

uint8_t Bcd(int v) { return static_cast<uint8_t>(((v / 10) << 4) | (v % 10)); }

}  // namespace

std::vector<uint8_t> UartState::Serialize() const {
  const uint8_t fixed[] = {ier, iir, lcr, mcr, lsr, msr, scr, dll, dlm, fcr, thr_ipending};
  std::vector<uint8_t> b(sizeof(fixed) + rx.size());
  std::copy(std::begin(fixed), std::end(fixed), b.begin());
  std::copy(rx.begin(), rx.end(), b.begin() + sizeof(fixed));
  return b;
}

absl::StatusOr<UartState> UartState::Deserialize(std::span<const uint8_t> b) {
  constexpr size_t kFixed = 11;
  if (b.size() < kFixed || b.size() > kFixed + Uart::kRxCapacity) {
    return absl::InvalidArgumentError(absl::StrFormat("UART state: bad length %d", b.size()));
  }
  UartState s;
  s.ier = b[0], s.iir = b[1], s.lcr = b[2], s.mcr = b[3], s.lsr = b[4], s.msr = b[5];
  s.scr = b[6], s.dll = b[7], s.dlm = b[8], s.fcr = b[9], s.thr_ipending = b[10];
  s.rx.assign(b.begin() + kFixed, b.end());
  return s;
}

void Uart::PioRead(uint16_t offset, uint8_t* data, uint32_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  std::memset(data, 0, size);
  data[0] = ReadReg(offset);
}

void Uart::PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) {
  (void)size;
  std::lock_guard<std::mutex> lock(mu_);
  WriteReg(offset, data[0]);
}

uint8_t Uart::ModemStatus() const {
  if ((s_.mcr & kMcrLoop) == 0) {
    return s_.msr;
  }
  // Loopback: the modem inputs are wired to the modem outputs (the 8250 driver probes this).
  uint8_t m = s_.msr & kMsrAnyDelta;
  if (s_.mcr & kMcrRts) m |= kMsrCts;
  if (s_.mcr & kMcrDtr) m |= kMsrDsr;
  if (s_.mcr & kMcrOut1) m |= kMsrRi;
  if (s_.mcr & kMcrOut2) m |= kMsrDcd;
  return m;
}

uint8_t Uart::ReadReg(uint16_t offset) {
  switch (offset) {
    case kData: {
      if (s_.lcr & kLcrDlab) {
        return s_.dll;
      }
      uint8_t v = 0;
      if (!rx_.empty()) {
        v = rx_.front();
        rx_.pop_front();
      }
      if (rx_.empty()) {
        s_.lsr &= static_cast<uint8_t>(~(kLsrDr | kLsrBi));
      }
      UpdateIrq();
      return v;
    }
    case kIer:
      return (s_.lcr & kLcrDlab) ? s_.dlm : s_.ier;
    case kIir: {
      const uint8_t v = s_.iir;
      if ((v & 0x0f) == kIirThri) {
        s_.thr_ipending = 0;
        UpdateIrq();
      }
      return v;
    }
    case kLcr:
      return s_.lcr;
    case kMcr:
      return s_.mcr;
    case kLsr: {
      const uint8_t v = s_.lsr;
      if (v & (kLsrBi | kLsrOe)) {
        s_.lsr &= static_cast<uint8_t>(~(kLsrBi | kLsrOe));
        UpdateIrq();
      }
      return v;
    }
    case kMsr: {
      const uint8_t v = ModemStatus();
      if (s_.msr & kMsrAnyDelta) {
        s_.msr &= static_cast<uint8_t>(~kMsrAnyDelta);
        UpdateIrq();
      }
      return v;
    }
    case kScr:
      return s_.scr;
    default:
      return 0xff;
  }
}

void Uart::Receive(uint8_t byte) {
  if (rx_.size() >= kRxCapacity) {
    s_.lsr |= kLsrOe;
    return;
  }
  rx_.push_back(byte);
  s_.lsr |= kLsrDr;
}

void Uart::WriteReg(uint16_t offset, uint8_t v) {
  switch (offset) {
    case kData:
      if (s_.lcr & kLcrDlab) {
        s_.dll = v;
        return;
      }
      if (s_.mcr & kMcrLoop) {
        Receive(v);
      } else if (out_) {
        out_(v);
      }
      // Transmission is instantaneous: the holding register is empty again at once.
      s_.thr_ipending = 1;
      s_.lsr |= kLsrThre | kLsrTemt;
      UpdateIrq();
      return;
    case kIer:
      if (s_.lcr & kLcrDlab) {
        s_.dlm = v;
        return;
      }
      {
        const uint8_t changed = (s_.ier ^ v) & 0x0f;
        s_.ier = v & 0x0f;
        if ((changed & kIerThri) && (s_.ier & kIerThri) && (s_.lsr & kLsrThre)) {
          s_.thr_ipending = 1;
        }
      }
      UpdateIrq();
      return;
    case kIir:  // FCR on write
      if (v & kFcrClearRx) {
        rx_.clear();
        s_.lsr &= static_cast<uint8_t>(~(kLsrDr | kLsrBi));
      }
      s_.fcr = v & 0xc9;
      s_.iir = static_cast<uint8_t>((s_.iir & 0x0f) | ((s_.fcr & kFcrEnable) ? kIirFifoEnabled : 0));
      UpdateIrq();
      return;
    case kLcr:
      s_.lcr = v;
      return;
    case kMcr:
      s_.mcr = v & 0x1f;
      return;
    case kScr:
      s_.scr = v;
      return;
    default:
      return;  // LSR and MSR are read-only
  }
}

void Uart::UpdateIrq() {
  uint8_t id = kIirNoInt;
  if ((s_.ier & kIerRlsi) && (s_.lsr & kLsrIntAny)) {
    id = kIirRlsi;
  } else if ((s_.ier & kIerRdi) && (s_.lsr & kLsrDr)) {
    id = kIirRdi;
  } else if ((s_.ier & kIerThri) && s_.thr_ipending) {
    id = kIirThri;
  } else if ((s_.ier & kIerMsi) && (s_.msr & kMsrAnyDelta)) {
    id = kIirMsi;
  }
  s_.iir = static_cast<uint8_t>(id | (s_.iir & 0xf0));
  const bool level = id != kIirNoInt;
  if (level != irq_level_) {
    irq_level_ = level;
    if (irq_) {
      irq_(level);
    }
  }
}

size_t Uart::EnqueueInput(std::span<const uint8_t> bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (uint8_t b : bytes) {
    if (rx_.size() >= kRxCapacity) {
      break;
    }
    Receive(b);
    ++n;
  }
  UpdateIrq();
  return n;
}

UartState Uart::Save() const {
  std::lock_guard<std::mutex> lock(mu_);
  UartState s = s_;
  s.rx.assign(rx_.begin(), rx_.end());
  return s;
}

void Uart::Restore(const UartState& s) {
  std::lock_guard<std::mutex> lock(mu_);
  s_ = s;
  rx_.assign(s.rx.begin(), s.rx.end());
  s_.rx.clear();
  irq_level_ = false;
  UpdateIrq();
}

std::string Uart::Describe() const {
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrFormat("uart: ier=%02x iir=%02x lsr=%02x mcr=%02x thr_pending=%d rx=%d irq=%d",
                         s_.ier, s_.iir, s_.lsr, s_.mcr, s_.thr_ipending, rx_.size(),
                         irq_level_ ? 1 : 0);
}

void I8042::PioRead(uint16_t offset, uint8_t* data, uint32_t size) {
  (void)offset;
  std::memset(data, 0, size);
}

void I8042::PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) {
  (void)size;
  constexpr uint8_t kCmdResetCpu = 0xfe;
  if (offset == 4 && data[0] == kCmdResetCpu && reset_) {
    reset_();
  }
}

void Cmos::PioRead(uint16_t offset, uint8_t* data, uint32_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  std::memset(data, 0, size);
  if (offset == 0) {
    data[0] = index_;
    return;
  }
  const time_t now = ::time(nullptr);
  struct tm t;
  ::gmtime_r(&now, &t);
  switch (index_ & 0x7f) {
    case 0x00: data[0] = Bcd(t.tm_sec); break;
    case 0x02: data[0] = Bcd(t.tm_min); break;
    case 0x04: data[0] = Bcd(t.tm_hour); break;
    case 0x06: data[0] = Bcd(t.tm_wday + 1); break;
    case 0x07: data[0] = Bcd(t.tm_mday); break;
    case 0x08: data[0] = Bcd(t.tm_mon + 1); break;
    case 0x09: data[0] = Bcd(t.tm_year % 100); break;
    case 0x32: data[0] = Bcd((1900 + t.tm_year) / 100); break;
    case 0x0a: data[0] = 0x26; break;  // 32.768 kHz base, no update in progress
    case 0x0b: data[0] = 0x02; break;  // 24-hour mode, BCD
    case 0x0d: data[0] = 0x80; break;  // battery good
    default: data[0] = 0; break;
  }
}

void Cmos::PioWrite(uint16_t offset, const uint8_t* data, uint32_t size) {
  (void)size;
  std::lock_guard<std::mutex> lock(mu_);
  if (offset == 0) {
    index_ = data[0];
  }
}

}  // namespace lmig
