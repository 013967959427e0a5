// Populate-on-demand policy, following Xen 4.7's xen/arch/x86/mm/p2m-pod.c: a VM sees `max`
// granules of RAM; its PoD cache holds `target` pages. Both of Xen's counters are kept:
// `count` (pages in the cache) and `entry_count` (p2m entries still PoD). A populate takes one
// page from the cache (count--, entry_count--); a reclaim gives it back (count++, entry_count++).
//
// Reclaim rules (`--pod-reclaim`):
//   xen      p2m_pod_demand_populate as 4.7 does it: on EVERY populate while entry_count > count
//            (true throughout a ballooned boot), pod_eager_reclaim zero-checks the oldest slot of
//            the 32-entry ring of recently populated granules, one granule per zero check, going
//            on through the ring only while the cache is empty (count == 0); then, only if
//            count == 0, p2m_pod_emergency_sweep: downwards from where the last sweep stopped
//            (first time: the highest granule a guest populated), batches of `stride`, stopping
//            once count > 0 and the scan is `limit` below its start. Still empty: out of PoD
//            memory (Xen crashes the domain). About one flush per populate while guests zero.
//   batched  kvmscale's earlier rule, kept as an improvement to measure against: nothing until
//            the cache is empty; then the whole ring newest first in batches of `stride`, then a
//            sweep that wraps once. About one flush per `stride` populates.
//
// A zero check (p2m_pod_zero_check) of one granule or a batch: skip granules a VMM-side access
// holds (Xen skips pages whose count_info is above max_ref); quick check (first 128 bytes, Xen's
// 16 words) of each; fence the survivors (the entry is PoD again: no guest access from here);
// ONE flush if anything was fenced (p2m_tlb_flush_sync flushes only when an entry changed); full
// check of each; zero granules are discarded to the cache, the others restored.
//
// Pure policy over a PodBackend, so the rules are unit-tested with fake memory. Not thread-safe:
// callers serialise per VM (the VM's "pod" lock).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvmscale::mm {

// What the policy needs from memory. Granule indices are relative to the PoD region.
class PodBackend {
 public:
  virtual ~PodBackend() = default;
  // A VMM-side access holds it (Xen: a page reference beyond the domain's own, which
  // p2m_pod_zero_check skips): not a candidate.
  virtual bool referenced(uint64_t /*g*/) { return false; }
  virtual bool quick_zero(uint64_t g) = 0;  // first 128 bytes are zero
  virtual bool full_zero(uint64_t g) = 0;   // the whole granule is zero
  virtual void fence(uint64_t g) = 0;       // guest can no longer access it (write-protect)
  virtual void unfence(uint64_t g) = 0;     // restore access: it stays populated
  virtual void discard(uint64_t g) = 0;     // free it (MADV_DONTNEED); next touch faults again
  virtual void flush() = 0;                 // EPT-like flush on the VM's dirty pCPUs
};

enum class PodReclaim { Xen, Batched };
const char* pod_reclaim_name(PodReclaim r);
bool parse_pod_reclaim(const std::string& s, PodReclaim& out);

struct PodParams {
  uint64_t max = 0;     // granules the VM sees
  uint64_t target = 0;  // granules its PoD cache holds (populated + cache = target)
  uint32_t stride = 16;
  uint32_t limit = 1024;
  uint32_t eager_ring = 32;
  PodReclaim reclaim = PodReclaim::Xen;
  uint32_t vm = 0;  // the VM's index, for the probes
};

struct PodStats {
  uint64_t populates = 0, faults = 0, duplicate_faults = 0;
  uint64_t eager_checks = 0, sweeps = 0, zero_checks = 0;
  uint64_t scanned = 0, referenced_skipped = 0, quick_rejected = 0, fenced = 0, restored = 0,
           reclaimed = 0;
  uint64_t flushes = 0, out_of_memory = 0;
  uint64_t max_populated = 0;
};

class Pod {
 public:
  enum class Entry : uint8_t { Pod, Populated };
  enum class Fault { Populate, AlreadyPopulated, OutOfMemory };
  // Test hook points inside a zero check, with the granule concerned.
  enum class HookPoint { AfterQuickCheck, BeforeDiscard };

  Pod(PodParams p, PodBackend& backend);
  // Guest first touch of granule g (may be a duplicate event for a populated one).
  Fault on_fault(uint64_t g);
  // Granules the VMM populated itself (e.g. boot data); counted against the target.
  void mark_populated(uint64_t g);

  Entry entry(uint64_t g) const { return entries_[g]; }
  uint64_t populated() const { return populated_; }
  uint64_t count() const { return count_; }              // pages in the PoD cache
  uint64_t entry_count() const { return entry_count_; }  // entries still PoD
  const PodParams& params() const { return p_; }
  const PodStats& stats() const { return stats_; }
  nlohmann::json report() const;
  // Tests only: called at each hook point of every zero check (under the caller's pod lock).
  void set_test_hook(std::function<void(HookPoint, uint64_t)> h) { hook_ = std::move(h); }

 private:
  static constexpr uint64_t kNone = ~0ull;
  // p2m_pod_zero_check: candidates (Populated granules) as one check with at most one flush;
  // returns how many were reclaimed.
  uint64_t zero_check(const std::vector<uint64_t>& candidates);
  void populate(uint64_t g);
  void eager_reclaim_xen();
  void emergency_sweep_xen();
  void eager_reclaim_batched();
  void emergency_sweep_batched();
  void hook(HookPoint at, uint64_t g) {
    if (hook_) hook_(at, g);
  }

  PodParams p_;
  PodBackend& backend_;
  std::vector<Entry> entries_;
  uint64_t populated_ = 0;
  uint64_t count_, entry_count_;  // Xen's p2m->pod.count and p2m->pod.entry_count
  std::vector<uint64_t> ring_;    // pod.mrp: recently populated, kNone = empty slot
  uint32_t ring_idx_ = 0;         // next slot to write = the oldest entry
  uint64_t max_guest_ = 0;        // highest granule populated by a guest fault
  uint64_t sweep_from_ = kNone;   // where the next sweep starts (pod.reclaim_single); kNone: top
  PodStats stats_;
  std::function<void(HookPoint, uint64_t)> hook_;
};

}  // namespace kvmscale::mm
