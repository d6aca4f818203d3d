// `src`: a VM session plus the outgoing migration; and what `src` and `dst` share
// (src/cli/outgoing_migration.h).
#include "src/cli/outgoing_migration.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_format.h"

namespace lmig {
namespace {

// TLS for a TCP migration: certificates if given, else the pre-shared key, unless --no-tls.
absl::StatusOr<std::shared_ptr<const TlsConfig>> TlsOf(const TransportFlags& f,
                                                       const crypto::Psk* psk) {
  const bool tcp = f.transport == "tcp";
  const int cert_flags = !f.tls_cert.empty() + !f.tls_key.empty() + !f.tls_ca.empty();
  if ((cert_flags > 0 || f.no_tls) && !tcp) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: TLS is for --transport tcp (over RDMA --psk-file seals the control channel; "
        "README, \"Security\")",
        f.no_tls ? "--no-tls" : "--tls-cert/--tls-key/--tls-ca"));
  }
  if (cert_flags > 0 && f.no_tls) {
    return absl::InvalidArgumentError("--no-tls and --tls-cert/--tls-key/--tls-ca: pick one");
  }
  if (cert_flags > 0 && cert_flags < 3) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s missing: mutual TLS needs --tls-cert, --tls-key and --tls-ca together",
        f.tls_cert.empty() ? "--tls-cert" : f.tls_key.empty() ? "--tls-key" : "--tls-ca"));
  }
  if (cert_flags == 3) {
    return TlsConfig::WithCertificates(f.tls_cert, f.tls_key, f.tls_ca);
  }
  if (tcp && psk != nullptr && !f.no_tls) {
    return TlsConfig::WithPsk(psk->bytes());
  }
  return std::shared_ptr<const TlsConfig>();
}

}  // namespace

proto::TransportKind KindOf(const std::string& t) {
  return t == "tcp" ? proto::TransportKind::kTcp : proto::TransportKind::kRdma;
}

std::string ProtectionOf(const TransportFlags& f, const crypto::Psk* psk,
                         const TlsConfig* tls) {
  std::string s;
  if (psk != nullptr) {
    s = ", authenticated (--psk-file)";
  }
  if (tls != nullptr) {
    absl::StrAppend(&s, psk != nullptr || !tls->certificates() ? "" : ", authenticated",
                    ", TLS 1.3 (", tls->keyed_by(), ")");
  } else if (psk != nullptr && f.transport == "tcp") {
    s += "; --no-tls: page data in clear";
  } else if (psk != nullptr) {
    s += ", control channel encrypted; page data by RDMA WRITE in clear (README, \"Security\")";
  }
  return s;
}

absl::StatusOr<TransportOptions> OptionsOf(const TransportFlags& f, const crypto::Psk* psk) {
  TransportOptions o;
  ASSIGN_OR_RETURN(o.tls, TlsOf(f, psk));
  o.rdma_device = f.rdma_device;
  o.timeout = absl::Seconds(f.timeout_s);
  o.busy_poll = f.rdma_busy_poll;
  ASSIGN_OR_RETURN(o.max_write_bytes, ParseSize("--rdma-write-size", f.rdma_write_size));
  if (o.max_write_bytes < 4096 || o.max_write_bytes > (16u << 20) ||
      o.max_write_bytes % 4096 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--rdma-write-size %s: must be a multiple of 4K from 4K to 16M", f.rdma_write_size));
  }
  if (f.timeout_s < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--timeout %d: must be at least 1 second", f.timeout_s));
  }
  return o;
}

absl::StatusOr<int> StreamsOf(int flag) {
  if (flag < 0 || flag > static_cast<int>(proto::kMaxStreams)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--streams %d: 1..%d (0: the default)", flag, proto::kMaxStreams));
  }
  if (flag > 0) {
    return flag;
  }
  const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
  return static_cast<int>(std::clamp<long>(online, 1, 8));
}

void Report(const char* role, const MigrationStats& stats, const std::string& json_path) {
  std::fprintf(stderr, "lmig-rdma %s: %s", role, stats.HumanReport().c_str());
  if (!json_path.empty()) {
    absl::Status s = WriteStatsJson(stats, json_path);
    if (!s.ok()) {
      std::fprintf(stderr, "lmig-rdma %s: %s\n", role, std::string(s.message()).c_str());
    }
  }
}

absl::StatusOr<int> SourceCommand(const VmFlags& vm, const SourceFlags& flags) {
  ASSIGN_OR_RETURN(MachineConfig config, MachineConfigFromFlags(vm));
  ASSIGN_OR_RETURN(auto rt, VmRuntime::Create(config));
  OutgoingMigration out(rt.get(), flags, "src");
  RETURN_IF_ERROR(out.Prepare());
  RETURN_IF_ERROR(rt->machine->LoadLinux({vm.kernel, vm.initrd, vm.cmdline}));
  out.ArmWatcher();
  RETURN_IF_ERROR(rt->session->Start());
  RETURN_IF_ERROR(rt->machine->Start());
  out.ArmTimer();
  ASSIGN_OR_RETURN(ExitInfo e, rt->session->Run());
  return out.Finish(e);
}

}  // namespace lmig
