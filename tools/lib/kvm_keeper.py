"""Runs inside the lab for its whole life: holds one KVM VM whose vCPU never enables its local
APIC. KVM counts such vCPUs in the static key apic_sw_disabled and live-patches kvm.ko's code
whenever that count moves between 0 and 1, i.e. whenever a nested guest starts or enables its
APIC with no other such vCPU around. Both lab lockups caught with a backtrace sat exactly on
those patched branches (apic_enabled() in __apic_accept_irq, README "Known issues"); with this
vCPU held, the count never returns to 0 and the code is patched once, before any test runs."""

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
