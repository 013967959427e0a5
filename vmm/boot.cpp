#include "vmm/boot.hpp"

#include <cstring>
#include <stdexcept>

namespace kvmscale::vmm {
namespace {

constexpr uint64_t kPtePresent = 1, kPteWrite = 2, kPteUser = 4, kPteLarge = 0x80;
// U=1 on every mapping: KVM-PVM runs guest code at hardware CPL 3 under shadow paging.
constexpr uint64_t kTableFlags = kPtePresent | kPteWrite | kPteUser;

constexpr uint16_t kCodeSel = 0x08, kDataSel = 0x10, kTssSel = 0x18;

uint64_t* table(const mm::GuestMemory& mem, uint64_t gpa) {
  return mem.object_at<uint64_t>(gpa);  // page tables sit well inside the always-present low area
}

void write_page_tables(const mm::GuestMemory& mem) {
  uint64_t* pml4 = table(mem, KS_PML4_GPA);
  uint64_t* pdpt = table(mem, KS_PDPT_GPA);
  pml4[0] = KS_PDPT_GPA | kTableFlags;
  // Map all of KS_MAX_PD GiB, not just RAM: a guest access past its RAM then reaches no memslot
  // and exits as MMIO (contained and reported) instead of faulting inside the guest.
  for (uint64_t i = 0; i < KS_MAX_PD; i++) {
    uint64_t pd_gpa = KS_PD_GPA + i * KS_PAGE_SIZE;
    pdpt[i] = pd_gpa | kTableFlags;
    uint64_t* pd = table(mem, pd_gpa);
    for (uint64_t j = 0; j < 512; j++) pd[j] = ((i << 30) | (j << 21)) | kTableFlags | kPteLarge;
  }
}

void write_gdt_tss(const mm::GuestMemory& mem) {
  uint64_t* gdt = table(mem, KS_GDT_GPA);
  gdt[0] = 0;
  gdt[1] = 0x00af9b000000ffffull;  // 64-bit code, DPL 0
  gdt[2] = 0x00cf93000000ffffull;  // data, DPL 0
  // 16-byte busy 64-bit TSS descriptor for the 104-byte TSS at KS_TSS_GPA.
  uint64_t base = KS_TSS_GPA, limit = 0x67;
  gdt[3] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x8bull << 40) |
           (((base >> 24) & 0xff) << 56);
  gdt[4] = base >> 32;
}

kvm_segment segment(uint16_t sel, uint8_t type, bool code64) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = sel;
  s.type = type;
  s.present = 1;
  s.s = 1;
  s.g = 1;
  s.l = code64 ? 1 : 0;
  s.db = code64 ? 0 : 1;
  return s;
}

}  // namespace

void write_boot_area(const mm::GuestMemory& mem, const BootParams& p) {
  if (mem.size() < kMinGuestMem || mem.size() > kMaxGuestMem)
    throw std::invalid_argument("guest memory size outside the supported range");
  if (p.nr_vcpus == 0 || p.nr_vcpus > KS_MAX_VCPUS)
    throw std::invalid_argument("vCPU count outside 1.." + std::to_string(KS_MAX_VCPUS));
  if (p.image.empty() || p.image.size() > KS_IMAGE_MAX)
    throw std::invalid_argument("guest image is empty or larger than 1 MiB");
  if (p.guest_args.size() > KS_GUEST_ARGS) throw std::invalid_argument("too many guest arguments");

  write_page_tables(mem);
  write_gdt_tss(mem);
  std::memcpy(mem.translate(KS_IMAGE_GPA, p.image.size()), p.image.data(), p.image.size());

  auto* bi = mem.object_at<ks_boot_info>(KS_BOOTINFO_GPA);
  *bi = ks_boot_info{};
  bi->magic = KS_BOOTINFO_MAGIC;
  bi->abi_version = KS_ABI_VERSION;
  bi->nr_vcpus = p.nr_vcpus;
  bi->vm_index = p.vm_index;
  bi->mem_size = mem.size();
  bi->ram_start = KS_RAM_GPA;
  bi->ram_end = mem.size();
  for (size_t i = 0; i < p.guest_args.size(); i++) bi->args[i] = p.guest_args[i];
}

void setup_vcpu(VcpuFd& vcpu, uint32_t index, Backend backend,
                const std::vector<kvm_cpuid_entry2>& cpuid) {
  vcpu.set_cpuid(cpuid);

  kvm_sregs s = vcpu.sregs();
  s.cs = segment(kCodeSel, 0xb, true);
  s.ds = s.es = s.fs = s.gs = s.ss = segment(kDataSel, 0x3, false);
  s.tr = kvm_segment{};
  s.tr.base = KS_TSS_GPA;
  s.tr.limit = 0x67;
  s.tr.selector = kTssSel;
  s.tr.type = 0xb;  // busy 64-bit TSS
  s.tr.present = 1;
  s.ldt = kvm_segment{};
  s.ldt.unusable = 1;
  s.gdt.base = KS_GDT_GPA;
  s.gdt.limit = 5 * 8 - 1;
  s.idt.base = 0;
  s.idt.limit = 0;     // no IDT: any exception becomes a triple fault, which kvmscale contains
  s.cr0 = 0x80050033;  // PG AM WP NE ET MP PE
  s.cr3 = KS_PML4_GPA;
  s.cr4 = 0x620;   // OSXMMEXCPT OSFXSR PAE
  s.efer = 0xd01;  // NXE LMA LME SCE
  vcpu.set_sregs(s);

  kvm_regs r{};
  r.rip = KS_IMAGE_GPA;
  r.rsp = KS_STACK_GPA + (index + 1ull) * KS_STACK_SIZE;
  r.rdi = index;
  r.rsi = KS_HCALL_GPA + index * KS_PAGE_SIZE;
  r.rdx = KS_BOOTINFO_GPA;
  r.rflags = 0x2;
  vcpu.set_regs(r);

  if (backend == Backend::Pvm) {
    // Without a registered VIF page KVM-PVM emulates CPL-0 code instruction by instruction.
    uint64_t vif = KS_VIF_GPA + index * KS_PAGE_SIZE;
    if (vcpu.set_msr(kPvmVifMsr, vif | kPvmVifEnable) != 1)
      throw KvmError("KVM_SET_MSRS (PVM VIF page) not accepted", EINVAL);
  }
}

}  // namespace kvmscale::vmm
