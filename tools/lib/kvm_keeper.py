"""Runs inside the lab for its whole life and holds one KVM VM with one vCPU whose local APIC
is never enabled. The lab's kernel live-patches its own text (an int3 breakpoint on every CPU,
then the new jump) whenever a static key changes, and KVM changes three of them as VMs come
and go: `preempt_notifier_key` (raised by the first VM, dropped with the last, i.e. on nearly
every lmig-rdma start and exit in a test; its sites are in `__schedule` and
`finish_task_switch`) and `apic_hw_disabled` / `apic_sw_disabled` (moved when the number of
vCPUs with a disabled LAPIC goes between 0 and 1). Whole-lab freezes have been caught with
both lab CPUs trapping on exactly those patched sites under QEMU's multi-threaded TCG (README,
Known issues). With this VM held, none of the three keys returns to 0 and each site is
patched once, before any test runs."""

import fcntl
import os
import signal

KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_CREATE_IRQCHIP = 0xAE60

kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)  # an in-kernel LAPIC, as lmig-rdma's vCPUs have
vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
print("kvm_keeper: holding a vCPU with its LAPIC software-disabled", flush=True)
signal.pause()
