// lmig-rdma: boot a Linux VM (`run`), run one and live-migrate it (`src`), or receive one and
// continue it (`dst`).
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/cli/commands.h"
#include "src/cli/options.h"

namespace {

constexpr const char* kDefaultCmdline =
    "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp";

void AddVmFlags(CLI::App* app, lmig::VmFlags& f) {
  app->add_option("--kernel", f.kernel, "Linux bzImage to boot")->required();
  app->add_option("--initrd", f.initrd, "initramfs (cpio) to load");
  app->add_option("--cmdline", f.cmdline, "kernel command line")->default_str(kDefaultCmdline);
  app->add_option("--mem", f.mem, "guest memory, e.g. 512M, 4G")->default_str("512M");
  app->add_option("--cpus", f.cpus, "vCPUs (1..64)")->default_val(1);
  app->add_option("--dirty-tracking", f.dirty_tracking,
                  "dirty page tracking: ring (KVM dirty ring) or bitmap")
      ->check(CLI::IsMember({"ring", "bitmap"}))
      ->default_val("ring");
  app->add_option("--kvm", f.kvm_path, "KVM device")->default_val("/dev/kvm");
}

void AddTransportFlags(CLI::App* app, lmig::TransportFlags& t) {
  app->add_option("--transport", t.transport, "tcp or rdma")
      ->check(CLI::IsMember({"tcp", "rdma"}))
      ->default_val("rdma");
  app->add_option("--rdma-device", t.rdma_device, "verbs device to use (default: by address)");
  app->add_option("--stats-json", t.stats_json, "write the migration statistics here as JSON");
  app->add_option("--psk-file", t.psk_file,
                  "pre-shared key file from `lmig-rdma keygen` (mode 0600; both sides the same "
                  "key): authenticates both peers and encrypts the control channel");
  app->add_option("--tls-cert", t.tls_cert,
                  "TCP: this side's certificate chain (PEM) for mutual TLS 1.3 (with --tls-key "
                  "and --tls-ca)");
  app->add_option("--tls-key", t.tls_key, "TCP: the private key of --tls-cert (PEM, mode 0600)");
  app->add_option("--tls-ca", t.tls_ca,
                  "TCP: the CA (PEM) that must have signed the peer's certificate");
  app->add_flag("--no-tls", t.no_tls,
                "TCP with --psk-file: do not encrypt the connection with TLS (peers are still "
                "authenticated and control messages sealed; page data travels in clear)");
  app->add_option("--timeout", t.timeout_s, "give up on a silent peer after this many seconds")
      ->default_val(30);
  app->add_flag("--rdma-busy-poll", t.rdma_busy_poll,
                "poll the RDMA completion queue in a loop (lower latency, burns a core)");
  app->add_option("--rdma-write-size", t.rdma_write_size,
                  "largest single RDMA WRITE, e.g. 64K (4K..16M)")
      ->default_val("256K");
}

void AddOutgoingFlags(CLI::App* app, lmig::SourceFlags& f, bool source) {
  auto* peer = app->add_option(
      "--peer", f.peer,
      source ? "destination HOST:PORT" : "after resuming, migrate the guest on to HOST:PORT");
  if (source) {
    peer->required();
  }
  app->add_option("--migrate-after", f.migrate_after_s,
                  "start migrating after this many seconds (default: at once)");
  app->add_option("--migrate-on-output", f.migrate_on_output,
                  "start migrating when the guest console prints this text");
  app->add_option("--downtime-target", f.downtime_target_ms,
                  "stop-and-copy when the rest fits in this many ms")
      ->default_val(50);
  app->add_option("--max-bandwidth", f.max_bandwidth,
                  "cap the migration rate, e.g. 100M (bytes/s); 0 = no cap")
      ->default_val("0");
  app->add_option("--max-rounds", f.max_rounds, "pre-copy round cap")->default_val(30);
  app->add_option("--migrate-retries", f.retries,
                  "after a failed migration, try again this many times (the guest runs on here)")
      ->default_val(0);
  app->add_option("--retry-delay", f.retry_delay_s, "seconds between a failure and its retry")
      ->default_val(5);
  app->add_flag("--verify-memory", f.verify_memory,
                "hash all guest memory on both sides at the end (adds downtime)");
  app->add_flag("--no-throttle", f.no_throttle, "never throttle vCPUs to force convergence");
  app->add_option("--streams", f.streams,
                  "parallel connections, each on a reactor thread of its own (TCP; default: "
                  "the online CPUs, at most 8; RDMA: 1)");
  if (!source) {
    app->add_option("--out-stats-json", f.transport.stats_json,
                    "statistics of the onward migration as JSON");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lmig-rdma: a VMM that live-migrates Linux VMs over RDMA (or TCP)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all");

  lmig::VmFlags run_flags;
  CLI::App* run = app.add_subcommand("run", "boot a VM with its serial console on stdin/stdout");
  AddVmFlags(run, run_flags);

  lmig::VmFlags src_vm;
  lmig::SourceFlags src_flags;
  CLI::App* src = app.add_subcommand("src", "boot a VM and live-migrate it to a destination");
  AddVmFlags(src, src_vm);
  AddTransportFlags(src, src_flags.transport);
  AddOutgoingFlags(src, src_flags, true);

  lmig::DestFlags dst_flags;
  CLI::App* dst = app.add_subcommand("dst", "receive a live migration and run the VM");
  AddTransportFlags(dst, dst_flags.transport);
  dst->add_option("--listen", dst_flags.listen, "ADDR:PORT to listen on")->required();
  dst->add_option("--kvm", dst_flags.kvm_path, "KVM device")->default_val("/dev/kvm");
  dst->add_flag("--insecure", dst_flags.insecure,
                "without --psk-file or --tls-cert, listen on a non-loopback address anyway "
                "(anyone who can reach it can push a guest here)");
  dst->add_option("--max-mem", dst_flags.max_mem,
                  "refuse a guest larger than this (default: this host's memory)");
  dst->add_option("--max-time", dst_flags.max_time_s,
                  "seconds the whole incoming migration may take (default: 300 + 1 per 16 MiB)");
  AddOutgoingFlags(dst, dst_flags.outgoing, false);

  std::string keygen_file;
  CLI::App* keygen =
      app.add_subcommand("keygen", "write a fresh migration key (mode 0600) to FILE");
  keygen->add_option("FILE", keygen_file, "the new key file (must not exist)")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {
      return app.exit(e);
    }
    std::fprintf(stderr, "lmig-rdma: %s (see --help)\n", e.what());
    return 2;
  }
  if (run_flags.cmdline.empty()) {
    run_flags.cmdline = kDefaultCmdline;
  }
  if (src_vm.cmdline.empty()) {
    src_vm.cmdline = kDefaultCmdline;
  }

  absl::StatusOr<int> rc;
  if (*run) {
    rc = lmig::RunCommand(run_flags);
  } else if (*src) {
    rc = lmig::SourceCommand(src_vm, src_flags);
  } else if (*keygen) {
    rc = lmig::KeygenCommand(keygen_file);
  } else {
    rc = lmig::DestCommand(dst_flags);
  }
  if (!rc.ok()) {
    std::fprintf(stderr, "lmig-rdma: %s\n", std::string(rc.status().message()).c_str());
    return 1;
  }
  return *rc;
}
