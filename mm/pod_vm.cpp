#include "mm/pod_vm.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>

namespace kvmscale::mm {

// OR-reduce fixed 512-byte blocks (a constant trip count the compiler unrolls and vectorises),
// stopping at the first non-zero block; an AVX2 clone is picked at load time where available
// (not under sanitizers: TSan crashes in ifunc resolvers that run before it is initialised; not
// with clang, used for the fuzz build, which refuses target_clones together with no_sanitize).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(__clang__)
#define KVMSCALE_CLONES
#else
#define KVMSCALE_CLONES __attribute__((target_clones("avx2", "default")))
#endif
// Reads guest memory that a guest (or, in tests, a host thread) may be writing at the same time:
// racy by design, which is why survivors of the quick check are fenced before the full check.
// TSan cannot see guest writes; the host-thread writer of tests/test_pod_vm.cpp it would report.
__attribute__((no_sanitize("thread"))) KVMSCALE_CLONES bool is_zero(const uint8_t* p,
                                                                    uint64_t len) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  const uint64_t words = len / 8, full = words / 64 * 64;
  for (uint64_t i = 0; i < full; i += 64) {
    uint64_t acc = 0;
    for (uint64_t j = 0; j < 64; j++) acc |= w[i + j];
    if (acc) return false;
  }
  uint64_t acc = 0;
  for (uint64_t i = full; i < words; i++) acc |= w[i];
  return acc == 0;
}

namespace {
PodParams with_granules(PodParams p, uint64_t len, uint64_t granule) {
  p.max = len / granule;
  return p;
}
}  // namespace

PodVm::PodVm(uint8_t* ram, uint64_t len, uint64_t granule, PodParams params, Userfaultfd& uffd,
             std::unique_ptr<locks::AnyLock> lock, P2mView& p2m, uint64_t gpa_base,
             std::function<void()> out_of_memory)
    : base_(reinterpret_cast<uint64_t>(ram)),
      len_(len),
      granule_(granule),
      gpa_base_(gpa_base),
      uffd_(uffd),
      lock_(std::move(lock)),
      p2m_(p2m),
      out_of_memory_(std::move(out_of_memory)),
      pod_(with_granules(params, len, granule), *this),
      refs_(std::make_unique<std::atomic<uint32_t>[]>(len / granule)) {
  uffd_.register_range(ram, len);
}

PodVm::~PodVm() { uffd_.unregister_range(reinterpret_cast<void*>(base_), len_); }

PodVm::Outcome PodVm::handle(const FaultEvent& ev) {
  uint64_t g = (ev.address - base_) / granule_;
  locks::Guard<locks::AnyLock> guard(*lock_);
  if (ev.write_protect) {
    // A write to a granule fenced by a batch. Holding the lock means the batch is decided:
    // restored granules were unfenced (which woke the writer), discarded ones need a wake so
    // the write retries and faults as MISSING.
    wp_faults_++;
    uffd_.wake(addr(g), granule_);
    return Outcome::Resolved;
  }
  switch (pod_.on_fault(g)) {
    case Pod::Fault::Populate:
      if (int r = uffd_.zeropage(addr(g), granule_); r != 0 && r != -EEXIST) uffd_errors_++;
      return Outcome::Resolved;
    case Pod::Fault::AlreadyPopulated:
      uffd_.wake(addr(g), granule_);  // a duplicate event: the page is there, let it retry
      return Outcome::Resolved;
    case Pod::Fault::OutOfMemory: break;
  }
  // The VM is being crashed. The faulting thread may be a vCPU (a kick gets it out) or a VMM
  // thread touching the RAM outside KVM_RUN, which nothing else would ever wake: give it a zero
  // page over the target (the VM is dead) so that it finishes and the run can stop.
  if (int r = uffd_.zeropage(addr(g), granule_); r != 0 && r != -EEXIST) uffd_errors_++;
  oom_unblocked_++;
  return Outcome::OutOfMemory;
}

bool PodVm::get_page(uint64_t gpa, const std::function<void()>& poll) {
  if (gpa < gpa_base_ || gpa - gpa_base_ >= len_) return true;  // not PoD: always present
  const uint64_t g = (gpa - gpa_base_) / granule_;
  locks::AnyLock::Node node;
  lock_->lock(node, [&] {
    if (poll) poll();
  });
  bool ok = true;
  if (pod_.entry(g) == Pod::Entry::Pod) {
    if (pod_.on_fault(g) == Pod::Fault::Populate) {
      vmm_populates_++;
      if (int r = uffd_.zeropage(addr(g), granule_); r != 0 && r != -EEXIST) uffd_errors_++;
    } else {
      ok = false;
    }
  }
  if (ok) refs_[g].fetch_add(1, std::memory_order_acq_rel);
  lock_->unlock(node);
  if (!ok && out_of_memory_) out_of_memory_();
  return ok;
}

void PodVm::put_page(uint64_t gpa) {
  if (gpa < gpa_base_ || gpa - gpa_base_ >= len_) return;
  refs_[(gpa - gpa_base_) / granule_].fetch_sub(1, std::memory_order_acq_rel);
}

// p2m_pod_zero_check_superpage's quick check: the first 16 words of EVERY 4 KiB page of the
// granule (one page with 4 KiB granules, p2m_pod_zero_check's), so a large granule dirty at the
// start of any page costs no fence and no flush.
bool PodVm::quick_zero(uint64_t g) {
  const auto* p = reinterpret_cast<const uint8_t*>(addr(g));
  for (uint64_t off = 0; off < granule_; off += kQuickPage)
    if (!is_zero(p + off, 128)) return false;
  return true;
}

bool PodVm::full_zero(uint64_t g) {
  return is_zero(reinterpret_cast<const uint8_t*>(addr(g)), granule_);
}

void PodVm::fence(uint64_t g) {
  p2m_.fence(gpa_base_ + g * granule_);  // before the guest loses access: the entry is PoD
  if (uffd_.writeprotect(addr(g), granule_, true) != 0) uffd_errors_++;
}

void PodVm::flush() { p2m_.flush(); }

void PodVm::unfence(uint64_t g) {
  if (uffd_.writeprotect(addr(g), granule_, false) != 0) uffd_errors_++;
}

void PodVm::discard(uint64_t g) {
  madvise(reinterpret_cast<void*>(addr(g)), granule_, MADV_DONTNEED);
  uffd_.writeprotect(addr(g), granule_, false);  // drop any marker left on the empty range
  uffd_.wake(addr(g), granule_);                 // writers blocked on the fence retry (MISSING)
}

nlohmann::json PodVm::report() const {
  nlohmann::json r = pod_.report();
  r["granule"] = granule_;
  r["write_protect_faults"] = wp_faults_;
  r["uffd_errors"] = uffd_errors_;
  r["vmm_populates"] = vmm_populates_;
  r["oom_unblocked_faults"] = oom_unblocked_;
  return r;
}

}  // namespace kvmscale::mm
