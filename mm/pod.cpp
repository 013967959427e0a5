#include "mm/pod.hpp"

#include <stdexcept>

namespace kvmscale::mm {

Pod::Pod(PodParams p, PodBackend& backend)
    : p_(p), backend_(backend), entries_(p.max, Entry::Pod), sweep_cursor_(p.max ? p.max - 1 : 0) {
  if (p.max == 0 || p.target == 0 || p.target > p.max)
    throw std::invalid_argument("PoD target must be between 1 and max granules");
  if (p.stride == 0) throw std::invalid_argument("PoD sweep stride must be positive");
}

void Pod::mark_populated(uint64_t g) {
  if (entries_[g] == Entry::Populated) return;
  entries_[g] = Entry::Populated;
  populated_++;
  stats_.max_populated = std::max(stats_.max_populated, populated_);
}

Pod::Fault Pod::on_fault(uint64_t g) {
  stats_.faults++;
  if (entries_[g] == Entry::Populated) {
    // A retried fault (e.g. after a kick interrupted the vCPU's wait) or a race with another vCPU.
    stats_.duplicate_faults++;
    return Fault::AlreadyPopulated;
  }
  if (populated_ >= p_.target) {
    eager_reclaim();
    if (populated_ >= p_.target) emergency_sweep();
    if (populated_ >= p_.target) {
      stats_.out_of_memory++;
      return Fault::OutOfMemory;
    }
  }
  mark_populated(g);
  stats_.populates++;
  recent_.push_back(g);
  if (recent_.size() > p_.eager_ring) recent_.pop_front();
  return Fault::Populate;
}

uint64_t Pod::reclaim_batch(const std::vector<uint64_t>& candidates) {
  std::vector<uint64_t> fenced;
  for (uint64_t g : candidates) {
    stats_.scanned++;
    if (entries_[g] != Entry::Populated) continue;
    if (!backend_.quick_zero(g)) {
      stats_.quick_rejected++;
      continue;
    }
    backend_.fence(g);  // the entry goes back to PoD: present -> not present
    entries_[g] = Entry::Pod;
    fenced.push_back(g);
  }
  if (fenced.empty()) return 0;
  stats_.fenced += fenced.size();
  backend_.flush();  // one synchronous flush per batch
  stats_.flushes++;
  uint64_t reclaimed = 0;
  for (uint64_t g : fenced) {
    if (backend_.full_zero(g)) {
      backend_.discard(g);
      populated_--;
      reclaimed++;
    } else {
      entries_[g] = Entry::Populated;  // written after the quick check: give it back intact
      backend_.unfence(g);
      stats_.restored++;
    }
  }
  stats_.reclaimed += reclaimed;
  return reclaimed;
}

void Pod::eager_reclaim() {
  stats_.eager_checks++;
  std::vector<uint64_t> ring(recent_.rbegin(), recent_.rend());
  recent_.clear();
  for (size_t i = 0; i < ring.size(); i += p_.stride) {
    std::vector<uint64_t> batch(ring.begin() + i,
                                ring.begin() + std::min(ring.size(), i + p_.stride));
    reclaim_batch(batch);
  }
}

void Pod::emergency_sweep() {
  stats_.sweeps++;
  const uint64_t start = sweep_cursor_;
  uint64_t scanned = 0, got = 0;
  // Downwards in batches, wrapping once; stop `limit` below the start once something was found.
  while (scanned < p_.max && (got == 0 || scanned < p_.limit)) {
    std::vector<uint64_t> batch;
    while (batch.size() < p_.stride && scanned < p_.max) {
      uint64_t g = (start + p_.max - scanned) % p_.max;
      scanned++;
      if (entries_[g] == Entry::Populated) batch.push_back(g);
    }
    got += reclaim_batch(batch);
  }
  sweep_cursor_ = (start + p_.max - (scanned % p_.max)) % p_.max;
}

nlohmann::json Pod::report() const {
  const PodStats& s = stats_;
  return {{"max", p_.max},
          {"target", p_.target},
          {"populated", populated_},
          {"max_populated", s.max_populated},
          {"faults", s.faults},
          {"duplicate_faults", s.duplicate_faults},
          {"populates", s.populates},
          {"eager_checks", s.eager_checks},
          {"sweeps", s.sweeps},
          {"scanned", s.scanned},
          {"quick_rejected", s.quick_rejected},
          {"fenced", s.fenced},
          {"restored", s.restored},
          {"reclaimed", s.reclaimed},
          {"flushes", s.flushes},
          {"out_of_memory", s.out_of_memory}};
}

}  // namespace kvmscale::mm
