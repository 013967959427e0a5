// Populate-on-demand for one VM's free RAM (memslot 1): mm::Pod's policy on real memory.
// Faults come from the FaultService; zero checks read the host mapping; fencing is userfaultfd
// write-protection (no guest write can land between the zero check and MADV_DONTNEED); the flush
// is whatever the caller supplies (a cross-call to the VM's pCPUs).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "locks/any_lock.hpp"
#include "mm/fault_service.hpp"
#include "mm/pod.hpp"
#include "mm/userfaultfd.hpp"

namespace kvmscale::mm {

// True if [p, p+len) is all zero bytes (len a multiple of 8): the PoD zero check.
bool is_zero(const uint8_t* p, uint64_t len);

class PodVm final : public PodBackend {
 public:
  enum class Outcome { Resolved, OutOfMemory };
  // Registers [ram, ram+len) with uffd. `lock` serialises the policy (class "pod").
  PodVm(uint8_t* ram, uint64_t len, uint64_t granule, PodParams params, Userfaultfd& uffd,
        std::unique_ptr<locks::AnyLock> lock, std::function<void()> flush);
  ~PodVm() override;

  bool contains(uint64_t addr) const { return addr >= base_ && addr - base_ < len_; }
  // The p2m epoch of the granule holding byte `offset` of the range: bumped each time the
  // granule's entry leaves "populated" (fenced for reclaim). A translation cached before the
  // bump is valid only until the flush that follows it.
  uint32_t epoch_at(uint64_t offset) const {
    uint64_t g = offset / granule_;
    return g < granules_ ? epochs_[g].load(std::memory_order_acquire) : 0;
  }
  Outcome handle(const FaultEvent& ev);
  nlohmann::json report() const;

  // PodBackend
  bool quick_zero(uint64_t g) override;
  bool full_zero(uint64_t g) override;
  void fence(uint64_t g) override;
  void unfence(uint64_t g) override;
  void discard(uint64_t g) override;
  void flush() override { flush_(); }

 private:
  uint64_t addr(uint64_t g) const { return base_ + g * granule_; }
  uint64_t base_, len_, granule_;
  Userfaultfd& uffd_;
  std::unique_ptr<locks::AnyLock> lock_;
  std::function<void()> flush_;
  Pod pod_;
  uint64_t wp_faults_ = 0, uffd_errors_ = 0;
  uint64_t granules_;
  std::unique_ptr<std::atomic<uint32_t>[]> epochs_;
};

}  // namespace kvmscale::mm
