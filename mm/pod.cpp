#include "mm/pod.hpp"

#include <stdexcept>

#include "locks/probe.hpp"

namespace kvmscale::mm {

const char* pod_reclaim_name(PodReclaim r) {
  switch (r) {
    case PodReclaim::Xen: return "xen";
    case PodReclaim::Batched: return "batched";
  }
  return "?";
}

bool parse_pod_reclaim(const std::string& s, PodReclaim& out) {
  for (PodReclaim r : {PodReclaim::Xen, PodReclaim::Batched})
    if (s == pod_reclaim_name(r)) {
      out = r;
      return true;
    }
  return false;
}

Pod::Pod(PodParams p, PodBackend& backend)
    : p_(p),
      backend_(backend),
      entries_(p.max, Entry::Pod),
      count_(p.target),
      entry_count_(p.max),
      ring_(p.eager_ring, kNone) {
  if (p.max == 0 || p.target == 0 || p.target > p.max)
    throw std::invalid_argument("PoD target must be between 1 and max granules");
  if (p.stride == 0) throw std::invalid_argument("PoD sweep stride must be positive");
  if (p.eager_ring == 0) throw std::invalid_argument("PoD eager ring must have a slot");
}

void Pod::mark_populated(uint64_t g) {
  if (entries_[g] == Entry::Populated || count_ == 0) return;
  entries_[g] = Entry::Populated;
  populated_++;
  count_--;
  entry_count_--;
  stats_.max_populated = std::max(stats_.max_populated, populated_);
}

void Pod::populate(uint64_t g) {
  mark_populated(g);
  stats_.populates++;
  KS_PROBE(pod_populate, p_.vm, g, populated_);
  max_guest_ = std::max(max_guest_, g);
  ring_[ring_idx_] = g;  // pod_eager_record
  ring_idx_ = (ring_idx_ + 1) % uint32_t(ring_.size());
}

Pod::Fault Pod::on_fault(uint64_t g) {
  stats_.faults++;
  if (entries_[g] == Entry::Populated) {
    // A retried fault (e.g. after a kick interrupted the vCPU's wait) or a race with another vCPU.
    stats_.duplicate_faults++;
    return Fault::AlreadyPopulated;
  }
  switch (p_.reclaim) {
    case PodReclaim::Xen:
      // p2m_pod_demand_populate: "only reclaim if we're in actual need of more cache", and
      // "only sweep if we're actually out of memory".
      if (entry_count_ > count_) eager_reclaim_xen();
      if (count_ == 0) emergency_sweep_xen();
      break;
    case PodReclaim::Batched:
      if (count_ == 0) eager_reclaim_batched();
      if (count_ == 0) emergency_sweep_batched();
      break;
  }
  if (count_ == 0) {
    stats_.out_of_memory++;
    return Fault::OutOfMemory;
  }
  populate(g);
  return Fault::Populate;
}

uint64_t Pod::zero_check(const std::vector<uint64_t>& candidates) {
  stats_.zero_checks++;
  KS_PROBE(pod_zero_check, p_.vm, uint64_t(candidates.size()));
  std::vector<uint64_t> fenced;
  for (uint64_t g : candidates) {
    stats_.scanned++;
    if (entries_[g] != Entry::Populated) continue;
    if (backend_.referenced(g)) {
      stats_.referenced_skipped++;
      continue;
    }
    if (!backend_.quick_zero(g)) {
      stats_.quick_rejected++;
      continue;
    }
    hook(HookPoint::AfterQuickCheck, g);
    backend_.fence(g);  // the entry goes back to PoD: present -> not present
    entries_[g] = Entry::Pod;
    fenced.push_back(g);
  }
  if (fenced.empty()) return 0;  // no entry changed: p2m_tlb_flush_sync does nothing
  stats_.fenced += fenced.size();
  backend_.flush();  // one synchronous flush per zero check
  stats_.flushes++;
  uint64_t reclaimed = 0;
  for (uint64_t g : fenced) {
    if (backend_.full_zero(g)) {
      hook(HookPoint::BeforeDiscard, g);
      backend_.discard(g);  // p2m_pod_cache_add; the entry stays PoD
      populated_--;
      count_++;
      entry_count_++;
      reclaimed++;
      KS_PROBE(pod_reclaim, p_.vm, g);
    } else {
      entries_[g] = Entry::Populated;  // written after the quick check: give it back intact
      backend_.unfence(g);
      stats_.restored++;
      KS_PROBE(pod_restore, p_.vm, g);
    }
  }
  stats_.reclaimed += reclaimed;
  return reclaimed;
}

void Pod::eager_reclaim_xen() {
  // pod_eager_reclaim: always the oldest slot; the next ones only while the cache is empty.
  stats_.eager_checks++;
  const uint32_t n = uint32_t(ring_.size());
  uint32_t i = 0;
  do {
    uint64_t& slot = ring_[(ring_idx_ + i++) % n];
    if (slot != kNone) {
      zero_check({slot});
      slot = kNone;
    }
  } while (count_ == 0 && i < n);
}

void Pod::emergency_sweep_xen() {
  // p2m_pod_emergency_sweep: downwards in batches; stop below `limit` once the cache has a page.
  stats_.sweeps++;
  const uint64_t start = sweep_from_ == kNone ? max_guest_ : sweep_from_;
  KS_PROBE(pod_sweep, p_.vm, start);
  const uint64_t limit = start > p_.limit ? start - p_.limit : 0;
  std::vector<uint64_t> batch;
  uint64_t i = start;
  bool stopped = false;
  for (;; i--) {
    if (entries_[i] == Entry::Populated) {
      batch.push_back(i);
      if (batch.size() == p_.stride) {
        zero_check(batch);
        batch.clear();
      }
    }
    if (i < limit && count_ > 0) {
      stopped = true;
      break;
    }
    if (i == 0) break;
  }
  if (!batch.empty()) zero_check(batch);
  // reclaim_single = i ? i - 1 : i, where 0 means "start from max_guest": a sweep that reached
  // the bottom, or stopped at granule 1, restarts from the top.
  sweep_from_ = stopped && i > 1 ? i - 1 : kNone;
}

void Pod::eager_reclaim_batched() {
  // The whole ring, newest first, in batches of `stride` (one flush each).
  stats_.eager_checks++;
  const uint32_t n = uint32_t(ring_.size());
  std::vector<uint64_t> ring;
  for (uint32_t k = 1; k <= n; k++) {
    uint64_t& slot = ring_[(ring_idx_ + n - k) % n];
    if (slot != kNone) ring.push_back(slot);
    slot = kNone;
  }
  for (size_t i = 0; i < ring.size(); i += p_.stride)
    zero_check(std::vector<uint64_t>(ring.begin() + long(i),
                                     ring.begin() + long(std::min(ring.size(), i + p_.stride))));
}

void Pod::emergency_sweep_batched() {
  stats_.sweeps++;
  const uint64_t start = sweep_from_ == kNone ? p_.max - 1 : sweep_from_;
  KS_PROBE(pod_sweep, p_.vm, start);
  uint64_t scanned = 0, got = 0;
  // Downwards in batches, wrapping once; stop `limit` below the start once something was found.
  while (scanned < p_.max && (got == 0 || scanned < p_.limit)) {
    std::vector<uint64_t> batch;
    while (batch.size() < p_.stride && scanned < p_.max) {
      uint64_t g = (start + p_.max - scanned) % p_.max;
      scanned++;
      if (entries_[g] == Entry::Populated) batch.push_back(g);
    }
    got += zero_check(batch);
  }
  sweep_from_ = (start + p_.max - (scanned % p_.max)) % p_.max;
}

nlohmann::json Pod::report() const {
  const PodStats& s = stats_;
  return {{"reclaim", pod_reclaim_name(p_.reclaim)},
          {"max", p_.max},
          {"target", p_.target},
          {"populated", populated_},
          {"max_populated", s.max_populated},
          {"cache_count", count_},
          {"entry_count", entry_count_},
          {"faults", s.faults},
          {"duplicate_faults", s.duplicate_faults},
          {"populates", s.populates},
          {"eager_checks", s.eager_checks},
          {"sweeps", s.sweeps},
          {"zero_checks", s.zero_checks},
          {"scanned", s.scanned},
          {"referenced_skipped", s.referenced_skipped},
          {"quick_rejected", s.quick_rejected},
          {"fenced", s.fenced},
          {"restored", s.restored},
          {"reclaimed", s.reclaimed},
          {"flushes", s.flushes},
          {"flushes_per_populate", s.populates ? double(s.flushes) / double(s.populates) : 0.0},
          {"out_of_memory", s.out_of_memory}};
}

}  // namespace kvmscale::mm
