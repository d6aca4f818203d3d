// The thread model: which thread owns what, and which calls each may make. Every class that
// is touched from more than one thread says so in its own header too; this is the whole map.
//
// main thread (`run`, `src`, `dst`): the session reactor (src/cli/session.h), an io_uring
//   that drives the guest console (UART output to stdout, stdin to the UART), the stop
//   signals (a signalfd; every thread blocks them, see BlockStopSignals), the machine's stop
//   event and the messages other threads Post to it. It owns the Machine: creates it, loads
//   the kernel, Start, Join, and it prints the report. On `dst` it first runs the incoming
//   migration itself (MigrationReceiver, with the transport's own io_uring or completion
//   queue) and starts the session reactor once the guest has resumed.
//
// migration thread (`src`, one per attempt, src/cli/migrate_commands.cc): runs
//   MigrationSender over its transport, which it owns with that transport's io_uring or
//   verbs objects; nothing else touches them. It may call Machine::Pause/Resume,
//   SetThrottle, SaveState and the DirtyLog (Start/Collect/Stop), and reads guest memory
//   (racing the vCPUs' writes, which dirty tracking catches). It reports only by
//   Session::Post and progress lines on stderr; the session thread joins it before the next
//   attempt.
//
// vCPU threads (one per vCPU, src/machine/vcpu_runner.h, named "vcpuN"): KVM_RUN and each
//   exit: port I/O into the devices (each locks itself), DirtyLog::HarvestRingFull when the
//   ring fills, RequestStop. Only they unblock the kick signal (SIGUSR1), which makes KVM_RUN
//   return; they park under the runner's mutex while paused.
//
// throttle thread ("throttle", while --throttle or the auto-converge throttle is on): kicks
//   the vCPUs every 10 ms so that each sleeps its share; it touches nothing else.
//
// stream reactors (`src --streams N`, N > 1; src/migration/source_streams.h, named
//   "streamN"): one per further stream, pinned to CPU N mod the online CPUs. Each connects
//   its own transport (TCP; or RDMA: its own rdma_cm id, QP, CQ, completion channel, PD and
//   MRs of guest memory, registered on this thread), joins, waits for STREAM_JOINED, and from
//   then on owns the transport and its io_uring alone; the migration
//   thread hands it work (page runs, round ends, deadlines) through a lock-free Mailbox and
//   waits on its answer counter. The migration thread may only call the transport's Shutdown
//   from outside (to cut a stalled stream on failure).
//
// stream readers (`dst`, a migration with N > 1 streams; src/migration/incoming_streams.h,
//   named "streamN"): one per further stream, started once all have joined and pinned as
//   the source's reactor of the same index is (StreamCpu); each attaches
//   guest memory to its transport (RDMA: registers it for the stream's own PD), answers
//   STREAM_JOINED, then reads its connection (pages straight into guest memory, its
//   STREAM_END markers into the round
//   barrier, under the IncomingStreams mutex) until its final marker. The incoming migration's
//   thread waits on the barrier and may call Shutdown on their transports (RDMA: the QP to
//   the error state, from that thread; verbs calls are thread-safe).
#pragma once

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <string>

namespace lmig {

// Names the calling thread as `top` and debuggers show it (at most 15 characters kept).
inline void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

// The CPU stream INDEX's thread is pinned to: INDEX mod the online CPUs (-1: unknown).
inline int StreamCpu(int index) {
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(index % online) : -1;
}

// Pins the calling thread to CPU (a hint: a refused pin, or CPU < 0, leaves it unpinned).
inline void PinThisThread(int cpu) {
  if (cpu < 0) {
    return;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)::sched_setaffinity(0, sizeof(set), &set);
}

}  // namespace lmig
