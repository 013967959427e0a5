// Populate-on-demand policy, following Xen's p2m-pod.c: a VM sees `max` granules of RAM but may
// have at most `target` populated. A first touch populates while under target; over it, the VM
// must first reclaim zero granules: eagerly from a ring of the most recently populated ones, then
// by an emergency sweep downwards from where the last one stopped (batches of `stride`, stopping
// about `limit` granules below its start once something was reclaimed). If nothing can be had the
// VM is out of PoD memory (Xen crashes the domain).
//
// Reclaiming a batch, as Xen's p2m_pod_zero_check: quick check (first 128 bytes zero) of each
// candidate; fence the survivors (no guest access from here: the entry is "PoD" again); ONE flush
// for the batch; full check of each; zero granules are discarded, the others restored.
//
// Pure policy over a PodBackend, so the order of sweeps, limits and accounting are unit-tested with
// fake memory. Not thread-safe: callers serialise per VM (the VM's "pod" lock).
#pragma once

#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <vector>

namespace kvmscale::mm {

// What the policy needs from memory. Granule indices are relative to the PoD region.
class PodBackend {
 public:
  virtual ~PodBackend() = default;
  virtual bool quick_zero(uint64_t g) = 0;  // first 128 bytes are zero
  virtual bool full_zero(uint64_t g) = 0;   // the whole granule is zero
  virtual void fence(uint64_t g) = 0;       // guest can no longer access it (write-protect)
  virtual void unfence(uint64_t g) = 0;     // restore access: it stays populated
  virtual void discard(uint64_t g) = 0;     // free it (MADV_DONTNEED); next touch faults again
  virtual void flush() = 0;                 // EPT-like flush on the VM's dirty pCPUs
};

struct PodParams {
  uint64_t max = 0;     // granules the VM sees
  uint64_t target = 0;  // granules it may have populated
  uint32_t stride = 16;
  uint32_t limit = 1024;
  uint32_t eager_ring = 32;
};

struct PodStats {
  uint64_t populates = 0, faults = 0, duplicate_faults = 0;
  uint64_t eager_checks = 0, sweeps = 0;
  uint64_t scanned = 0, quick_rejected = 0, fenced = 0, restored = 0, reclaimed = 0;
  uint64_t flushes = 0, out_of_memory = 0;
  uint64_t max_populated = 0;
};

class Pod {
 public:
  enum class Entry : uint8_t { Pod, Populated };
  enum class Fault { Populate, AlreadyPopulated, OutOfMemory };

  Pod(PodParams p, PodBackend& backend);
  // Guest first touch of granule g (may be a duplicate event for a populated one).
  Fault on_fault(uint64_t g);
  // Granules the VMM populated itself (e.g. boot data); counted against the target.
  void mark_populated(uint64_t g);

  Entry entry(uint64_t g) const { return entries_[g]; }
  uint64_t populated() const { return populated_; }
  const PodParams& params() const { return p_; }
  const PodStats& stats() const { return stats_; }
  nlohmann::json report() const;

 private:
  // Zero-checks candidates (Populated granules) as one batch; returns how many were reclaimed.
  uint64_t reclaim_batch(const std::vector<uint64_t>& candidates);
  void eager_reclaim();
  void emergency_sweep();

  PodParams p_;
  PodBackend& backend_;
  std::vector<Entry> entries_;
  uint64_t populated_ = 0;
  std::deque<uint64_t> recent_;  // most recently populated, newest at the back
  uint64_t sweep_cursor_;        // where the next emergency sweep starts (scans downwards)
  PodStats stats_;
};

}  // namespace kvmscale::mm
