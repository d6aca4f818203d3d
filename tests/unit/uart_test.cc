#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "src/devices/uart.h"

namespace lmig {
namespace {

struct UartFixture : testing::Test {
  std::string out;
  std::vector<bool> irqs;
  Uart uart{[this](uint8_t b) { out.push_back(static_cast<char>(b)); },
            [this](bool l) { irqs.push_back(l); }};
  uint8_t In(uint16_t off) {
    uint8_t v = 0;
    uart.PioRead(off, &v, 1);
    return v;
  }
  void Out(uint16_t off, uint8_t v) { uart.PioWrite(off, &v, 1); }
};

TEST_F(UartFixture, TransmitsBytes) {
  Out(0, 'h');
  Out(0, 'i');
  EXPECT_EQ(out, "hi");
  EXPECT_EQ(In(5) & 0x60, 0x60);  // THR empty, transmitter empty
}

TEST_F(UartFixture, ThrEmptyInterruptIsRaisedAndClearedByIirRead) {
  Out(1, 0x02);  // IER: THRI
  ASSERT_FALSE(irqs.empty());
  EXPECT_TRUE(irqs.back());
  EXPECT_EQ(In(2) & 0x0f, 0x02);  // IIR: THR empty
  EXPECT_FALSE(irqs.back());
  EXPECT_EQ(In(2) & 0x0f, 0x01);  // no interrupt pending
  Out(0, 'x');
  EXPECT_TRUE(irqs.back());
}

TEST_F(UartFixture, ReceivedDataRaisesInterruptUntilRead) {
  Out(1, 0x01);  // IER: RDI
  const uint8_t data[] = {'a', 'b'};
  EXPECT_EQ(uart.EnqueueInput(data), 2u);
  EXPECT_TRUE(irqs.back());
  EXPECT_EQ(In(5) & 0x01, 0x01);
  EXPECT_EQ(In(2) & 0x0f, 0x04);
  EXPECT_EQ(In(0), 'a');
  EXPECT_TRUE(irqs.back());
  EXPECT_EQ(In(0), 'b');
  EXPECT_FALSE(irqs.back());
  EXPECT_EQ(In(5) & 0x01, 0);
}

TEST_F(UartFixture, DivisorLatchAndScratch) {
  Out(3, 0x80);
  Out(0, 0x01);
  Out(1, 0x00);
  EXPECT_EQ(In(0), 0x01);
  Out(3, 0x03);
  Out(7, 0x5a);
  EXPECT_EQ(In(7), 0x5a);
  EXPECT_EQ(In(3), 0x03);
  EXPECT_TRUE(out.empty());
}

TEST_F(UartFixture, LoopbackWiresModemLinesAndData) {
  Out(4, 0x1a);  // LOOP | OUT2 | RTS: what the 8250 driver probes
  EXPECT_EQ(In(6) & 0xf0, 0x90);
  Out(0, 'q');
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(In(0), 'q');
}

TEST_F(UartFixture, StateRoundTrips) {
  Out(1, 0x01);
  const uint8_t data[] = {'z'};
  uart.EnqueueInput(data);
  UartState s = uart.Save();
  auto back = UartState::Deserialize(s.Serialize());
  ASSERT_TRUE(back.ok());
  Uart other([](uint8_t) {}, [](bool) {});
  other.Restore(*back);
  uint8_t v = 0;
  other.PioRead(0, &v, 1);
  EXPECT_EQ(v, 'z');
  EXPECT_FALSE(UartState::Deserialize(std::vector<uint8_t>(3)).ok());
}

}  // namespace
}  // namespace lmig
