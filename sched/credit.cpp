#include "sched/credit.hpp"

#include <algorithm>

namespace kvmscale::sched {

using locks::AnyLock;
using locks::Guard;

const char* balance_name(Balance b) {
  switch (b) {
    case Balance::Xen: return "xen";
    case Balance::Affinity: return "affinity";
    case Balance::Counted: return "counted";
    case Balance::Hybrid: return "hybrid";
    default: return "none";
  }
}

bool parse_balance(const std::string& s, Balance& out) {
  for (Balance b :
       {Balance::Xen, Balance::Affinity, Balance::Counted, Balance::Hybrid, Balance::None})
    if (s == balance_name(b)) {
      out = b;
      return true;
    }
  return false;
}

CreditScheduler::CreditScheduler(uint32_t npcpus, CreditParams params, locks::LockRegistry& locks,
                                 PcpuSignals& signals, std::vector<int> pcpu_node)
    : params_(params), signals_(signals), idle_mask_((npcpus + 63) / 64) {
  for (uint32_t p = 0; p < npcpus; p++) {
    auto pc = std::make_unique<Pcpu>();
    pc->index = p;
    pc->node = p < pcpu_node.size() ? pcpu_node[p] : 0;
    pc->lock = locks.make("runq", "runq[" + std::to_string(p) + "]");
    pc->affinity_count.assign(npcpus, 0);
    pc->affinity_bits = std::vector<std::atomic<uint64_t>>((npcpus + 63) / 64);
    pcpus_.push_back(std::move(pc));
  }
  acct_lock_ = locks.make("sched", "acct");
}

CreditScheduler::~CreditScheduler() = default;

SchedDomain& CreditScheduler::add_domain(uint32_t weight, uint32_t cap) {
  auto d = std::make_unique<SchedDomain>();
  d->index = uint32_t(domains_.size());
  d->weight = weight;
  d->cap = cap;
  domains_.push_back(std::move(d));
  return *domains_.back();
}

SchedVcpu& CreditScheduler::add_vcpu(SchedDomain& d, CpuSet affinity, void* owner) {
  auto v = std::make_unique<SchedVcpu>();
  v->id = uint32_t(vcpus_.size());
  v->dom = &d;
  v->affinity = std::move(affinity);
  v->owner = owner;
  v->stats.pcpus_used = CpuSet(npcpus());
  d.vcpus.push_back(v.get());
  vcpus_.push_back(std::move(v));
  return *vcpus_.back();
}

void CreditScheduler::start(uint64_t now, std::function<uint32_t(const SchedVcpu&)> placement) {
  uint32_t rr = 0;
  for (auto& v : vcpus_) {
    uint32_t p = placement ? placement(*v) : rr;
    if (!placement) {
      // Spread over allowed pCPUs: the first allowed one at or after a rotating start.
      for (uint32_t i = 0; i < npcpus(); i++, p = (p + 1) % npcpus())
        if (v->affinity.test(p)) break;
      rr = (p + 1) % npcpus();
    }
    v->processor.store(p);
    Pcpu& pc = *pcpus_[p];
    AnyLock::Node n;
    pc.lock->lock(n);
    runq_insert(pc, *v, now);
    pc.lock->unlock(n);
  }
  for (uint32_t p = 0; p < npcpus(); p++) set_idle(p, pcpus_[p]->runq.empty());
  next_acct_ns_ = now + params_.tslice_ns;
}

// --- run-queue helpers: caller holds pc's lock --------------------------------------------------

void CreditScheduler::runq_insert(Pcpu& pc, SchedVcpu& v, uint64_t now) {
  v.state = VState::Runnable;
  v.since_ns = now;
  int pri = v.pri.load(std::memory_order_relaxed);
  auto it = pc.runq.begin();
  while (it != pc.runq.end() && (*it)->pri.load(std::memory_order_relaxed) >= pri) ++it;
  v.pos = pc.runq.insert(it, &v);
  v.queued = true;
  track_affinity(pc, v, true);
  pc.nr_runnable.store(uint32_t(pc.runq.size()) + (pc.curr ? 1 : 0), std::memory_order_relaxed);
}

void CreditScheduler::runq_remove(Pcpu& pc, SchedVcpu& v) {
  pc.runq.erase(v.pos);
  v.queued = false;
  track_affinity(pc, v, false);
  pc.nr_runnable.store(uint32_t(pc.runq.size()) + (pc.curr ? 1 : 0), std::memory_order_relaxed);
}

// The bitmap costs O(|affinity|) per queue operation; only the strategies that read it pay.
void CreditScheduler::track_affinity(Pcpu& pc, const SchedVcpu& v, bool queued) {
  const Balance b = params_.balance;
  if (b != Balance::Affinity && b != Balance::Hybrid) return;
  if (b == Balance::Hybrid && v.affinity.count() == npcpus()) {
    if (queued)
      pc.unrestricted.fetch_add(1, std::memory_order_relaxed);
    else
      pc.unrestricted.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  for (uint32_t q : v.affinity.members()) {
    if (queued && pc.affinity_count[q]++ == 0)
      pc.affinity_bits[q / 64].fetch_or(1ull << (q % 64), std::memory_order_relaxed);
    if (!queued && --pc.affinity_count[q] == 0)
      pc.affinity_bits[q / 64].fetch_and(~(1ull << (q % 64)), std::memory_order_relaxed);
  }
}

void CreditScheduler::runq_sort(Pcpu& pc) {
  // Stable: FIFO within a priority survives re-sorting after accounting changed priorities.
  pc.runq.sort([](SchedVcpu* a, SchedVcpu* b) {
    return a->pri.load(std::memory_order_relaxed) > b->pri.load(std::memory_order_relaxed);
  });
  for (auto it = pc.runq.begin(); it != pc.runq.end(); ++it) (*it)->pos = it;
}

SchedVcpu* CreditScheduler::pick_local(Pcpu& pc, int* best_pri) {
  for (SchedVcpu* v : pc.runq)
    if (!v->parked.load(std::memory_order_relaxed)) {
      *best_pri = v->pri.load(std::memory_order_relaxed);
      return v;
    }
  *best_pri = int(Prio::Idle);
  return nullptr;
}

std::vector<SchedVcpu*> CreditScheduler::queued(uint32_t p) const {
  Pcpu& pc = *pcpus_[p];
  AnyLock::Node n;
  pc.lock->lock(n);
  std::vector<SchedVcpu*> v(pc.runq.begin(), pc.runq.end());
  pc.lock->unlock(n);
  return v;
}

void CreditScheduler::set_idle(uint32_t p, bool idle) {
  if (idle)
    idle_mask_[p / 64].fetch_or(1ull << (p % 64), std::memory_order_relaxed);
  else
    idle_mask_[p / 64].fetch_and(~(1ull << (p % 64)), std::memory_order_relaxed);
}

bool CreditScheduler::is_idle(uint32_t p) const {
  return (idle_mask_[p / 64].load(std::memory_order_relaxed) >> (p % 64)) & 1;
}

// Credit burn: 10 credits per ms of running; the sub-credit remainder carries to the next burn.
void CreditScheduler::burn(SchedVcpu& v, uint64_t now) {
  if (now <= v.since_ns) return;
  uint64_t delta = now - v.since_ns;
  v.since_ns = now;
  v.stats.run_ns += delta;
  if (params_.round_robin) return;
  constexpr uint64_t kNsPerCredit = 1'000'000 / kCreditsPerMs;
  v.credit_residual_ns += delta;
  v.credit.fetch_sub(int(v.credit_residual_ns / kNsPerCredit), std::memory_order_relaxed);
  v.credit_residual_ns %= kNsPerCredit;
}

void CreditScheduler::lock_vcpu(SchedVcpu& v, AnyLock::Node& n, Pcpu*& pc) {
  for (;;) {
    uint32_t p = v.processor.load(std::memory_order_acquire);
    pc = pcpus_[p].get();
    pc->lock->lock(n);
    if (v.processor.load(std::memory_order_relaxed) == p) return;
    pc->lock->unlock(n);
  }
}

// --- scheduling ---------------------------------------------------------------------------------

CreditScheduler::Decision CreditScheduler::schedule(uint32_t p, uint64_t now) {
  Pcpu& pc = *pcpus_[p];
  AnyLock::Node n;
  pc.lock->lock(n);
  pc.stats.schedules++;
  pc.need_resched.store(false, std::memory_order_relaxed);
  SchedVcpu* cur = pc.curr;
  if (cur && cur->state == VState::Running) {
    burn(*cur, now);
    // Ratelimit: a vCPU that started its slice less than ratelimit ago keeps the pCPU.
    if (!cur->yielding && !cur->parked.load(std::memory_order_relaxed) && params_.ratelimit_ns &&
        now < cur->slice_start_ns + params_.ratelimit_ns) {
      pc.lock->unlock(n);
      return {cur, cur->slice_start_ns + params_.ratelimit_ns};
    }
    pc.curr = nullptr;
    runq_insert(pc, *cur, now);  // competes again, behind its equals (round-robin at slice end)
    cur->yielding = false;
  } else {
    pc.curr = nullptr;  // it blocked or is done
  }
  int best = 0;
  SchedVcpu* next = pick_local(pc, &best);
  SchedVcpu* stolen = nullptr;
  if (params_.balance != Balance::None && (next == nullptr || best <= int(Prio::Over)))
    stolen = load_balance(pc, best, now);
  if (stolen)
    next = stolen;  // already taken off the peer's queue
  else if (next)
    runq_remove(pc, *next);
  if (next) {
    if (now > next->since_ns) next->stats.wait_ns += now - next->since_ns;
    next->state = VState::Running;
    next->since_ns = now;
    next->slice_start_ns = now;
    next->stats.schedules++;
    next->stats.pcpus_used.set(p);
    if (next != cur) pc.stats.context_switches++;
  } else {
    pc.stats.idle_picks++;
  }
  pc.curr = next;
  pc.nr_runnable.store(uint32_t(pc.runq.size()) + (next ? 1 : 0), std::memory_order_relaxed);
  set_idle(p, next == nullptr);
  pc.lock->unlock(n);
  return {next, now + params_.tslice_ns};
}

// --- load balancing (csched_load_balance) -------------------------------------------------------

bool CreditScheduler::peer_worth_trying(Pcpu& thief, const Pcpu& peer) {
  switch (params_.balance) {
    case Balance::Affinity: {
      uint32_t q = thief.index;
      if ((peer.affinity_bits[q / 64].load(std::memory_order_relaxed) >> (q % 64)) & 1) return true;
      thief.stats.balance.skipped_bitmap++;
      return false;
    }
    case Balance::Counted:
      if (peer.nr_runnable.load(std::memory_order_relaxed) > 1) return true;
      thief.stats.balance.skipped_count++;
      return false;
    case Balance::Hybrid: {
      if (peer.nr_runnable.load(std::memory_order_relaxed) <= 1) {
        thief.stats.balance.skipped_count++;
        return false;
      }
      uint32_t q = thief.index;
      if (peer.unrestricted.load(std::memory_order_relaxed) > 0 ||
          ((peer.affinity_bits[q / 64].load(std::memory_order_relaxed) >> (q % 64)) & 1))
        return true;
      thief.stats.balance.skipped_bitmap++;
      return false;
    }
    default: return true;
  }
}

SchedVcpu* CreditScheduler::steal_from(Pcpu& thief, Pcpu& peer, int min_pri) {
  for (SchedVcpu* v : peer.runq) {
    // Queues are ordered by priority: nothing further on is better than what we have.
    if (v->pri.load(std::memory_order_relaxed) <= min_pri) break;
    if (v->parked.load(std::memory_order_relaxed) || !v->affinity.test(thief.index)) continue;
    runq_remove(peer, *v);
    v->processor.store(thief.index, std::memory_order_release);
    v->stats.migrations++;
    return v;
  }
  return nullptr;
}

SchedVcpu* CreditScheduler::load_balance(Pcpu& pc, int local_pri, uint64_t now) {
  (void)now;
  uint64_t t0 = locks::lock_clock_ns();
  BalanceStats& st = pc.stats.balance;
  if (local_pri == int(Prio::Idle))
    st.attempts_idle++;
  else
    st.attempts_over++;
  const uint32_t np = npcpus();
  SchedVcpu* found = nullptr;
  // Own NUMA node first, then the others; peers visited round-robin from a moving start.
  for (int pass = 0; pass < 2 && !found; pass++) {
    for (uint32_t i = 0; i < np && !found; i++) {
      uint32_t q = (pc.balance_cursor + i) % np;
      Pcpu& peer = *pcpus_[q];
      if (q == pc.index || (peer.node == pc.node) != (pass == 0) || is_idle(q)) continue;
      st.peers_visited++;
      if (!peer_worth_trying(pc, peer)) continue;
      st.trylocks++;
      locks::TryGuard<AnyLock> g(*peer.lock);  // never spin on a peer's lock: could deadlock
      if (!g) {
        st.trylock_failures++;
        continue;
      }
      found = steal_from(pc, peer, local_pri);
      if (found) {
        st.steals++;
        pc.balance_cursor = (q + 1) % np;
      }
    }
  }
  if (!found) pc.balance_cursor = (pc.balance_cursor + 1) % np;
  st.balance_ns += locks::lock_clock_ns() - t0;
  return found;
}

// --- ticks, accounting --------------------------------------------------------------------------

void CreditScheduler::activate(SchedVcpu& v) {
  Guard<AnyLock> g(*acct_lock_);
  if (v.active || v.state == VState::Done) return;
  v.active = true;
  active_.push_back(&v);
  v.dom->active_vcpus++;
}

bool CreditScheduler::tick(uint32_t p, uint64_t now) {
  Pcpu& pc = *pcpus_[p];
  bool preempt = false, need_activate = false;
  SchedVcpu* cur = nullptr;
  {
    Guard<AnyLock> g(*pc.lock);
    pc.stats.ticks++;
    cur = pc.curr;
    if (cur && cur->state == VState::Running && !params_.round_robin) {
      burn(*cur, now);
      int boost = int(Prio::Boost);
      cur->pri.compare_exchange_strong(boost, int(Prio::Under), std::memory_order_relaxed);
      need_activate = !cur->active.load(std::memory_order_relaxed);
      if (cur->parked.load(std::memory_order_relaxed)) preempt = true;
    }
    uint64_t gen = acct_gen_.load(std::memory_order_acquire);
    if (gen != pc.last_acct_gen) {
      runq_sort(pc);
      pc.last_acct_gen = gen;
    }
    int best = 0;
    if (cur && pick_local(pc, &best) && best > cur->pri.load(std::memory_order_relaxed))
      preempt = true;
  }
  if (need_activate) activate(*cur);
  if (p == 0 && !params_.round_robin && now >= next_acct_ns_) {
    account(now);
    while (next_acct_ns_ <= now) next_acct_ns_ += params_.tslice_ns;
  }
  if (preempt) pc.need_resched.store(true, std::memory_order_release);
  return preempt || pc.need_resched.load(std::memory_order_acquire);
}

void CreditScheduler::account(uint64_t now) {
  (void)now;
  std::vector<uint32_t> to_tickle;
  {
    Guard<AnyLock> g(*acct_lock_);
    accounting_passes_++;
    const int64_t credit_total = int64_t(kCreditsPerTslice) * npcpus();
    int64_t weight_total = 0;
    for (auto& d : domains_) weight_total += int64_t(d->weight) * d->active_vcpus;
    if (weight_total > 0) {
      std::vector<SchedVcpu*> still_active;
      // Share per active vCPU of each domain.
      std::vector<int64_t> share(domains_.size(), 0), capv(domains_.size(), 0);
      std::vector<uint32_t> count(domains_.size(), 0);
      for (SchedVcpu* v : active_) count[v->dom->index]++;
      for (auto& d : domains_) {
        uint32_t c = count[d->index];
        if (!c) continue;
        int64_t fair = (credit_total * d->weight * c + weight_total - 1) / weight_total;
        if (d->cap) {
          int64_t cap = (int64_t(d->cap) * kCreditsPerTslice + 99) / 100;
          fair = std::min(fair, cap);
          capv[d->index] = (cap + c - 1) / c;
        }
        share[d->index] = (fair + c - 1) / c;
      }
      for (SchedVcpu* v : active_) {
        uint32_t di = v->dom->index;
        int credit =
            v->credit.fetch_add(int(share[di]), std::memory_order_relaxed) + int(share[di]);
        if (credit < 0) {
          v->pri.store(int(Prio::Over), std::memory_order_relaxed);
          if (capv[di] && credit < -capv[di] && !v->parked.exchange(true)) {
            v->stats.parks++;
            to_tickle.push_back(v->processor.load(std::memory_order_relaxed));
          }
          if (credit < -kCreditsPerTslice)
            v->credit.store(-kCreditsPerTslice, std::memory_order_relaxed);
        } else {
          int boost = int(Prio::Boost);
          if (v->pri.load(std::memory_order_relaxed) != boost)
            v->pri.store(int(Prio::Under), std::memory_order_relaxed);
          if (v->parked.exchange(false))
            to_tickle.push_back(v->processor.load(std::memory_order_relaxed));
          if (credit > kCreditsPerTslice) {
            // Earned more than it can use: stop accounting it; half the credit carries over.
            v->active = false;
            v->credit.store(credit / 2, std::memory_order_relaxed);
            continue;
          }
        }
        still_active.push_back(v);
      }
      active_.swap(still_active);
      for (auto& d : domains_) d->active_vcpus = 0;
      for (SchedVcpu* v : active_) v->dom->active_vcpus++;
    }
    acct_gen_.fetch_add(1, std::memory_order_release);
  }
  for (uint32_t p : to_tickle) signals_.tickle(p);
}

// --- block / wake / yield / finish -------------------------------------------------------------

bool CreditScheduler::block(uint32_t p, SchedVcpu& v, uint64_t now) {
  Pcpu& pc = *pcpus_[p];
  Guard<AnyLock> g(*pc.lock);
  if (v.wake_pending) {
    v.wake_pending = false;
    v.block_result = 0;
    return false;
  }
  burn(v, now);
  v.state = VState::Blocked;
  v.block_gen++;
  pc.need_resched.store(true, std::memory_order_release);
  return true;
}

void CreditScheduler::yield(uint32_t p, SchedVcpu& v) {
  Pcpu& pc = *pcpus_[p];
  Guard<AnyLock> g(*pc.lock);
  v.yielding = true;
  pc.need_resched.store(true, std::memory_order_release);
}

void CreditScheduler::tickle_for(SchedVcpu& v, uint32_t p) {
  // Caller holds p's lock. Preempt p if v beats what it runs; otherwise wake an idle pCPU that
  // may run v so it can steal it.
  Pcpu& pc = *pcpus_[p];
  if (is_idle(p) || (pc.curr && v.pri.load(std::memory_order_relaxed) >
                                    pc.curr->pri.load(std::memory_order_relaxed))) {
    pc.need_resched.store(true, std::memory_order_release);
    signals_.tickle(p);
    return;
  }
  for (uint32_t q : v.affinity.members())
    if (q != p && is_idle(q)) {
      signals_.tickle(q);
      return;
    }
}

void CreditScheduler::wake(SchedVcpu& v, uint64_t now, bool timed_out, uint64_t gen) {
  AnyLock::Node n;
  Pcpu* pc = nullptr;
  lock_vcpu(v, n, pc);
  if (v.state == VState::Blocked && (!timed_out || gen == v.block_gen)) {
    v.block_result = timed_out ? 1 : 0;
    v.block_result_due = true;
    v.stats.wakes++;
    int under = int(Prio::Under);
    if (!params_.round_robin &&
        v.pri.compare_exchange_strong(under, int(Prio::Boost), std::memory_order_relaxed))
      v.stats.boosts++;
    runq_insert(*pc, v, now);
    tickle_for(v, pc->index);
  } else if (!timed_out && (v.state == VState::Running || v.state == VState::Runnable)) {
    v.wake_pending = true;
  }
  pc->lock->unlock(n);
}

void CreditScheduler::finish(SchedVcpu& v, uint64_t now) {
  AnyLock::Node n;
  Pcpu* pc = nullptr;
  lock_vcpu(v, n, pc);
  if (v.state == VState::Runnable && v.queued) {
    if (now > v.since_ns) v.stats.wait_ns += now - v.since_ns;
    runq_remove(*pc, v);
  }
  if (v.state == VState::Running) {
    burn(v, now);
    pc->need_resched.store(true, std::memory_order_release);
    signals_.tickle(pc->index);  // its pCPU must drop it
  }
  v.state = VState::Done;
  pc->lock->unlock(n);
  Guard<AnyLock> g(*acct_lock_);
  if (v.active) {
    v.active = false;
    std::erase(active_, &v);
    v.dom->active_vcpus--;
  }
}

// --- report -------------------------------------------------------------------------------------

nlohmann::json CreditScheduler::report() const {
  nlohmann::json pcpus = nlohmann::json::array(), vcpus = nlohmann::json::array();
  for (const auto& pc : pcpus_) {
    const BalanceStats& b = pc->stats.balance;
    pcpus.push_back({{"index", pc->index},
                     {"node", pc->node},
                     {"schedules", pc->stats.schedules},
                     {"ticks", pc->stats.ticks},
                     {"context_switches", pc->stats.context_switches},
                     {"idle_picks", pc->stats.idle_picks},
                     {"balance",
                      {{"attempts_idle", b.attempts_idle},
                       {"attempts_over", b.attempts_over},
                       {"peers_visited", b.peers_visited},
                       {"skipped_bitmap", b.skipped_bitmap},
                       {"skipped_count", b.skipped_count},
                       {"trylocks", b.trylocks},
                       {"trylock_failures", b.trylock_failures},
                       {"steals", b.steals},
                       {"balance_ns", b.balance_ns}}}});
  }
  for (const auto& v : vcpus_) {
    const VcpuSchedStats& s = v->stats;
    vcpus.push_back({{"id", v->id},
                     {"domain", v->dom->index},
                     {"run_ns", s.run_ns},
                     {"wait_ns", s.wait_ns},
                     {"schedules", s.schedules},
                     {"migrations", s.migrations},
                     {"boosts", s.boosts},
                     {"wakes", s.wakes},
                     {"parks", s.parks},
                     {"credit", v->credit.load()},
                     {"pri", v->pri.load()},
                     {"pcpus_used", s.pcpus_used.to_string()},
                     {"affinity", v->affinity.to_string()}});
  }
  return {{"policy", params_.round_robin ? "rr" : "credit"},
          {"balance", balance_name(params_.balance)},
          {"tick_ns", params_.tick_ns},
          {"tslice_ns", params_.tslice_ns},
          {"ratelimit_ns", params_.ratelimit_ns},
          {"accounting_passes", accounting_passes_},
          {"pcpus", pcpus},
          {"vcpus", vcpus}};
}

}  // namespace kvmscale::sched
