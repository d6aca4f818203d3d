// A bounded single-producer, single-consumer queue of messages between two threads: how the
// migration thread hands a stream's reactor its work and how that reactor answers
// (src/base/thread_model.h). No lock: the producer owns the tail, the consumer the head, and a
// full or empty queue waits on the other side's counter (std::atomic wait/notify, a futex).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <utility>

namespace lmig {

template <typename T, size_t kCapacity>
class Mailbox {
  static_assert(kCapacity > 0);

 public:
  // Producer thread only. Waits while the queue is full.
  void Push(T v) {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    for (uint64_t head = head_.load(std::memory_order_acquire); tail - head >= kCapacity;
         head = head_.load(std::memory_order_acquire)) {
      head_.wait(head, std::memory_order_acquire);
    }
    slots_[tail % kCapacity] = std::move(v);
    tail_.store(tail + 1, std::memory_order_release);
    tail_.notify_one();
  }

  // Producer thread only: queues V unless the queue is full (then V is left as it was).
  bool TryPush(T& v) {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_.load(std::memory_order_acquire) >= kCapacity) {
      return false;
    }
    slots_[tail % kCapacity] = std::move(v);
    tail_.store(tail + 1, std::memory_order_release);
    tail_.notify_one();
    return true;
  }

  // Consumer thread only. Waits while the queue is empty.
  T Pop() {
    const uint64_t head = head_.load(std::memory_order_relaxed);
    for (uint64_t tail = tail_.load(std::memory_order_acquire); tail == head;
         tail = tail_.load(std::memory_order_acquire)) {
      tail_.wait(tail, std::memory_order_acquire);
    }
    T v = std::move(slots_[head % kCapacity]);
    head_.store(head + 1, std::memory_order_release);
    head_.notify_one();
    return v;
  }

  // Consumer thread only: the next message if there is one, without waiting.
  std::optional<T> TryPop() {
    const uint64_t head = head_.load(std::memory_order_relaxed);
    if (tail_.load(std::memory_order_acquire) == head) {
      return std::nullopt;
    }
    return Pop();
  }

 private:
  std::array<T, kCapacity> slots_{};
  alignas(64) std::atomic<uint64_t> head_{0};  // next slot to pop: written by the consumer
  alignas(64) std::atomic<uint64_t> tail_{0};  // next slot to push: written by the producer
};

}  // namespace lmig
