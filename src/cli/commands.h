// The subcommands. Each returns the process exit status, or an error for bad input that
// main prints as one line ("lmig-rdma: <what and where>") with exit status 1.
//
// Exit status: 0 guest rebooted/powered off, stopped by a signal or Ctrl-A x, or (src) migrated;
// 1 bad input or the VM failed (triple fault, KVM error); 3 (src) the migration failed and the
// guest ran on here until it ended.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace lmig {

struct VmFlags {
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string mem = "512M";
  int cpus = 1;
  std::string dirty_tracking = "ring";
  std::string kvm_path = "/dev/kvm";
};

struct TransportFlags {
  std::string transport = "rdma";
  std::string rdma_device;
  std::string stats_json;
  std::string psk_file;  // pre-shared key file (lmig-rdma keygen); both sides the same key
  // TCP: TLS 1.3 keyed by certificates (all three, PEM) instead of the pre-shared key.
  std::string tls_cert, tls_key, tls_ca;
  bool no_tls = false;   // TCP with a key: page data in clear (control still sealed)
  int timeout_s = 30;
  bool rdma_busy_poll = false;   // spin on the CQ instead of sleeping on its channel
  std::string rdma_write_size = "256K";  // largest single RDMA WRITE
};

struct SourceFlags {
  TransportFlags transport;
  std::string peer;
  double migrate_after_s = -1;
  std::string migrate_on_output;
  int downtime_target_ms = 50;
  std::string max_bandwidth = "0";
  int max_rounds = 30;
  int retries = 0;          // further attempts after a failed migration
  double retry_delay_s = 5;
  bool verify_memory = false;
  bool no_throttle = false;
  int streams = 0;          // parallel streams; 0: TCP the online CPUs (at most 8), RDMA 1
};

struct DestFlags {
  TransportFlags transport;
  std::string listen;
  std::string kvm_path = "/dev/kvm";
  bool insecure = false; // without psk_file, listen on a non-loopback address anyway
  std::string max_mem;   // largest guest accepted; empty: this host's physical memory
  int max_time_s = 0;    // bound on the whole incoming migration; 0: derived from its size
  // Optional onward migration once the guest runs here (e.g. ping-pong A -> B -> A):
  // outgoing.peer non-empty enables it; outgoing.transport is ignored (the incoming one is used).
  SourceFlags outgoing;
};

absl::StatusOr<int> RunCommand(const VmFlags& flags);
absl::StatusOr<int> SourceCommand(const VmFlags& vm, const SourceFlags& flags);
absl::StatusOr<int> DestCommand(const DestFlags& flags);
// `keygen FILE`: writes a fresh 32-byte key, mode 0600, never over an existing file
// (src/crypto/psk.h); prints where it went and how to share it. Errors name the file.
absl::StatusOr<int> KeygenCommand(const std::string& path);

}  // namespace lmig
