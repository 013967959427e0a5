#include "sched/credit.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <thread>

#include "locks/probe.hpp"

namespace kvmscale::sched {

using locks::AnyLock;
using locks::Guard;

const char* balance_name(Balance b) {
  switch (b) {
    case Balance::Xen: return "xen";
    case Balance::Affinity: return "affinity";
    case Balance::Counted: return "counted";
    case Balance::Hybrid: return "hybrid";
    case Balance::None: return "none";
  }
  return "?";
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

// Xen's balance steps (CSCHED_BALANCE_SOFT_AFFINITY, CSCHED_BALANCE_HARD_AFFINITY).
enum Step { kSoft = 0, kHard = 1 };

struct CreditScheduler::Pcpu {
  uint32_t index = 0;
  int node = 0;
  uint32_t node_idx = 0;  // into nodes_
  std::unique_ptr<AnyLock> lock;
#ifndef NDEBUG
  std::atomic<std::thread::id> holder{};  // who holds `lock`: checked by held()
#endif
  // Under `lock`.
  std::list<SchedVcpu*> runq;
  // Per priority level: where __runq_insert's walk stops (the first queued vCPU of a lower
  // level, or runq.end()). See runq_insert().
  std::array<std::list<SchedVcpu*>::iterator, kPrioLevels> insert_at;
  SchedVcpu* curr = nullptr;
  std::vector<uint32_t> affinity_count;  // [q]: queued vCPUs that may run on q
  uint32_t last_tickle = 0;              // Xen's last_tickle_cpu (per pCPU)
  uint64_t last_acct_gen = 0;            // Xen's runq_sort_last
  PcpuSchedStats stats;                  // counters of decisions taken under `lock`
  // Working sets of runq_tickle() and load_balance(), under `lock`: kept between calls so that
  // neither allocates once they have their size.
  struct {
    CpuSet idle, mask;
    std::vector<uint32_t> workers;
  } scratch;
  // Read without the lock.
  std::atomic<bool> need_resched{false};
  std::atomic<uint32_t> nr_runnable{0};   // queued + running (4.9's nr_runnable)
  AtomicCpuSet affinity_bits;             // q is a member: affinity_count[q] > 0
  std::atomic<uint32_t> unrestricted{0};  // hybrid: queued vCPUs that may run anywhere

  void held() const {
#ifndef NDEBUG
    assert(holder.load(std::memory_order_relaxed) == std::this_thread::get_id() &&
           "caller must hold this pCPU's schedule lock");
#endif
  }
};

// Holds a pCPU's schedule lock (blocking or try) and records the holder for held().
class CreditScheduler::RunqGuard {
 public:
  explicit RunqGuard(Pcpu& pc) : pc_(&pc), owns_(true) {
    pc.lock->lock(node_);
    mark();
  }
  RunqGuard(Pcpu& pc, std::try_to_lock_t) : pc_(&pc), owns_(pc.lock->try_lock(node_)) {
    if (owns_) mark();
  }
  // Locks v's processor, re-checking that v did not move meanwhile (vcpu_schedule_lock).
  RunqGuard(const std::vector<std::unique_ptr<Pcpu>>& pcpus, const SchedVcpu& v) : owns_(true) {
    for (;;) {
      uint32_t p = v.processor.load(std::memory_order_acquire);
      pc_ = pcpus[p].get();
      pc_->lock->lock(node_);
      if (v.processor.load(std::memory_order_relaxed) == p) break;
      pc_->lock->unlock(node_);
    }
    mark();
  }
  ~RunqGuard() {
    if (!owns_) return;
#ifndef NDEBUG
    pc_->holder.store(std::thread::id{}, std::memory_order_relaxed);
#endif
    pc_->lock->unlock(node_);
  }
  RunqGuard(const RunqGuard&) = delete;
  RunqGuard& operator=(const RunqGuard&) = delete;
  explicit operator bool() const { return owns_; }
  Pcpu& pcpu() const { return *pc_; }

 private:
  void mark() {
#ifndef NDEBUG
    pc_->holder.store(std::this_thread::get_id(), std::memory_order_relaxed);
#endif
  }
  Pcpu* pc_;
  AnyLock::Node node_;
  bool owns_;
};

CreditScheduler::CreditScheduler(uint32_t npcpus, CreditParams params, locks::LockRegistry& locks,
                                 PcpuSignals& signals, std::vector<int> pcpu_node)
    : params_(params), signals_(signals), idle_mask_(npcpus) {
  if (params_.tick_ns == 0) params_.tick_ns = tick_period_ns(params_.tslice_ns);
  pcpu_node.resize(npcpus, 0);
  nodes_ = pcpu_node;
  std::sort(nodes_.begin(), nodes_.end());
  nodes_.erase(std::unique(nodes_.begin(), nodes_.end()), nodes_.end());
  balance_bias_ = std::vector<std::atomic<uint32_t>>(nodes_.size());
  for (uint32_t p = 0; p < npcpus; p++) {
    auto pc = std::make_unique<Pcpu>();
    pc->index = p;
    pc->node = pcpu_node[p];
    pc->node_idx =
        uint32_t(std::lower_bound(nodes_.begin(), nodes_.end(), pc->node) - nodes_.begin());
    pc->lock = locks.make("runq", "runq[" + std::to_string(p) + "]");
    pc->affinity_count.assign(npcpus, 0);
    pc->affinity_bits = AtomicCpuSet(npcpus);
    pc->last_tickle = p;
    pc->insert_at.fill(pc->runq.end());
    pcpus_.push_back(std::move(pc));
  }
  acct_lock_ = locks.make("sched", "acct");
}

CreditScheduler::~CreditScheduler() = default;

bool CreditScheduler::need_resched(uint32_t p) const {
  return pcpus_[p]->need_resched.load(std::memory_order_acquire);
}

const PcpuSchedStats& CreditScheduler::pcpu_stats(uint32_t p) const { return pcpus_[p]->stats; }

int CreditScheduler::credits_per_tslice() const {
  return int(uint64_t(kCreditsPerMs) * params_.tslice_ns / 1'000'000);
}

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
  v->soft_affinity = CpuSet(npcpus(), true);
  v->owner = owner;
  v->stats.pcpus_used = CpuSet(npcpus());
  d.vcpus.push_back(v.get());
  vcpus_.push_back(std::move(v));
  return *vcpus_.back();
}

void CreditScheduler::start(uint64_t now, std::function<uint32_t(const SchedVcpu&)> placement) {
  uint32_t rr = 0;
  for (auto& v : vcpus_) {
    v->has_soft = has_soft_affinity(*v);  // once, not on every wake and balance step
    uint32_t p = placement ? placement(*v) : rr;
    if (!placement) {
      // Spread over allowed pCPUs: the first allowed one at or after a rotating start.
      for (uint32_t i = 0; i < npcpus(); i++, p = (p + 1) % npcpus())
        if (v->affinity.test(p)) break;
      rr = (p + 1) % npcpus();
    }
    v->processor.store(p);
    Pcpu& pc = *pcpus_[p];
    RunqGuard g(pc);
    runq_insert(pc, *v, now);
  }
  for (uint32_t p = 0; p < npcpus(); p++) set_idle(p, pcpus_[p]->runq.empty());
  next_acct_ns_ = now + params_.tslice_ns;
}

// --- run-queue helpers: caller holds pc's lock --------------------------------------------------

// __runq_insert: before the first vCPU of lower priority; a yielding vCPU goes one further, behind
// one lower-priority vCPU if there is one. Xen finds that place by walking the queue (O(queue
// length)); we keep, per priority level, where the walk would stop (`insert_at`), so an insert
// is O(1) and lands exactly where Xen's walk would: a deliberate difference in cost only.
// The walk compares the priorities the queued vCPUs had when queued or last re-sorted (`level`):
// accounting changes priorities without run-queue locks and runq_sort() catches up at the tick.
void CreditScheduler::runq_insert(Pcpu& pc, SchedVcpu& v, uint64_t now) {
  pc.held();
  assert(!v.queued && "BUG_ON(__vcpu_on_runq)");
  assert(pc.curr != &v && "a current vCPU is never queued");
  assert(!v.parked.load(std::memory_order_relaxed) && "a parked vCPU is not runnable");
  v.state = VState::Runnable;
  v.since_ns = now;
  const uint32_t lv = prio_level(v.pri.load(std::memory_order_relaxed));
  const auto stop = pc.insert_at[lv];  // the first queued vCPU of lower priority, or the end
  const bool one_further = v.yield_flag && stop != pc.runq.end();
  v.pos = pc.runq.insert(one_further ? std::next(stop) : stop, &v);
  v.level = lv;
  // Higher levels whose walk stopped at the same vCPU now stop at v (it is lower than them).
  // Behind `stop`, v changes no level's stop: every level above lv stops at or before `stop`.
  if (!one_further)
    for (uint32_t up = 0; up < lv; up++)
      if (pc.insert_at[up] == stop) pc.insert_at[up] = v.pos;
  v.queued = true;
  track_affinity(pc, v, true);
  update_runnable(pc);
}

void CreditScheduler::runq_remove(Pcpu& pc, SchedVcpu& v) {
  pc.held();
  assert(v.queued && "BUG_ON(!__vcpu_on_runq)");
  // A level that stopped at v now stops at the next vCPU below it. Those skipped on the way (a
  // yielder behind a lower vCPU; higher vCPUs left behind a lower one by runq_sort) stay behind
  // the new stop until the next re-sort, so each is skipped once per level: amortised O(1).
  for (uint32_t lv = 0; lv < kPrioLevels; lv++) {
    if (pc.insert_at[lv] != v.pos) continue;
    auto next = std::next(v.pos);
    while (next != pc.runq.end() && (*next)->level <= lv) ++next;
    pc.insert_at[lv] = next;
  }
  pc.runq.erase(v.pos);
  v.queued = false;
  track_affinity(pc, v, false);
  update_runnable(pc);
}

void CreditScheduler::update_runnable(Pcpu& pc) {
  bool running = pc.curr && pc.curr->state == VState::Running;
  pc.nr_runnable.store(uint32_t(pc.runq.size()) + (running ? 1 : 0), std::memory_order_relaxed);
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
    if (queued && pc.affinity_count[q]++ == 0) pc.affinity_bits.set(q, std::memory_order_relaxed);
    if (!queued && --pc.affinity_count[q] == 0)
      pc.affinity_bits.clear(q, std::memory_order_relaxed);
  }
}

// csched_runq_sort: after an accounting pass, move every BOOST/UNDER vCPU ahead of the OVER ones,
// keeping the order within each group (not a full sort: BOOST and UNDER stay interleaved). As
// Xen's, O(queue length), once per accounting pass; it also re-reads the priorities that
// runq_insert() compares (`level`) and where each level's walk stops.
void CreditScheduler::runq_sort(Pcpu& pc) {
  pc.held();
  std::list<SchedVcpu*> over;
  for (auto it = pc.runq.begin(); it != pc.runq.end();) {
    auto next = std::next(it);
    if ((*it)->pri.load(std::memory_order_relaxed) < int(Prio::Under))
      over.splice(over.end(), pc.runq, it);
    it = next;
  }
  pc.runq.splice(pc.runq.end(), over);  // list iterators (v->pos) stay valid across splices
  for (auto& at : pc.insert_at) at = pc.runq.end();
  for (auto it = pc.runq.rbegin(); it != pc.runq.rend(); ++it) {
    SchedVcpu& v = **it;
    v.level = prio_level(v.pri.load(std::memory_order_relaxed));
    for (uint32_t up = 0; up < v.level; up++) pc.insert_at[up] = std::prev(it.base());
  }
}

std::vector<SchedVcpu*> CreditScheduler::queued(uint32_t p) const {
  Pcpu& pc = *pcpus_[p];
  RunqGuard g(pc);
  return {pc.runq.begin(), pc.runq.end()};
}

void CreditScheduler::set_idle(uint32_t p, bool idle) {
  if (idle)
    idle_mask_.set(p, std::memory_order_relaxed);
  else
    idle_mask_.clear(p, std::memory_order_relaxed);
}

void CreditScheduler::read_idlers(CpuSet& out) const {
  idle_mask_.snapshot_into(out, std::memory_order_relaxed);
}

// burn_credits: 10 credits per ms of running; the sub-credit remainder carries to the next burn.
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

// --- scheduling (csched_schedule) ---------------------------------------------------------------

CreditScheduler::Decision CreditScheduler::schedule(uint32_t p, uint64_t now) {
  SchedVcpu* moving = nullptr;  // the current vCPU, leaving for another pCPU
  Decision d;
  {
    RunqGuard g(*pcpus_[p]);
    d = schedule_locked(*pcpus_[p], now, moving);
  }
  if (moving) {
    if (between_locks_hook) between_locks_hook(*moving);
    migrate(*moving, now);
  }
  return d;
}

CreditScheduler::Decision CreditScheduler::schedule_locked(Pcpu& pc, uint64_t now,
                                                           SchedVcpu*& moving) {
  pc.held();
  const uint32_t p = pc.index;
  pc.stats.schedules++;
  pc.need_resched.store(false, std::memory_order_relaxed);
  SchedVcpu* cur = pc.curr;
  const bool cur_was_running = cur && cur->state == VState::Running;
  bool requeued = false;  // cur could go on running: if another is picked, cur is preempted
  if (cur) {
    const bool running = cur_was_running;
    if (running) burn(*cur, now);
    const bool runnable = running && !cur->parked.load(std::memory_order_relaxed);
    // _VPF_migrating (set by a tick or a tickle): the vCPU is not vcpu_runnable() for
    // csched_schedule, so no ratelimit here; vcpu_migrate then moves it where _csched_cpu_pick
    // says now. If that is still here, it is requeued now, behind its equals, rather than
    // queued by vcpu_migrate's wake after the pick (the same place unless it outranks the head).
    const bool migrating = cur->migrating;
    uint32_t target = p;
    if (migrating && runnable) target = cpu_pick(pc, *cur);
    cur->migrating = false;
    const bool leaves = target != p;
    // Ratelimit: a runnable vCPU that has run less than ratelimit keeps the pCPU (yield or not,
    // as 4.7), for another ratelimit.
    if (runnable && !migrating && params_.ratelimit_ns &&
        now - cur->slice_start_ns < params_.ratelimit_ns) {
      KS_PROBE(sched_pick, p, int64_t(cur->id), int64_t(cur->dom->index), int64_t(cur->id));
      return {cur, now + params_.ratelimit_ns};
    }
    pc.curr = nullptr;
    requeued = runnable && !leaves;
    if (requeued)
      runq_insert(pc, *cur, now);  // competes again, behind its equals (round-robin)
    else if (running)
      cur->state = VState::Runnable;  // parked (off every queue until unparked) or leaving
    if (leaves) {
      // On no queue and current nowhere until migrate() queues it on the target: processor
      // changes under the old processor's lock, so whoever locks it next finds the target's.
      cur->processor.store(target, std::memory_order_release);
      cur->stats.migrations++;
      moving = cur;
    }
    cur->yield_flag = false;
  }
  SchedVcpu* next = pc.runq.empty() ? nullptr : pc.runq.front();
  int best = next ? next->pri.load(std::memory_order_relaxed) : int(Prio::Idle);
  if (best > int(Prio::Over) || params_.balance == Balance::None) {
    if (next) runq_remove(pc, *next);
  } else if (SchedVcpu* stolen = load_balance(pc, best, now)) {
    next = stolen;  // already off the peer's queue, and now ours
  } else if (next) {
    runq_remove(pc, *next);
  }
  if (next) {
    if (now > next->since_ns) next->stats.wait_ns += now - next->since_ns;
    // Ratelimit counts from when it started running (Xen's runstate entry time): a vCPU that
    // is picked again without having stopped keeps its start.
    if (!(next == cur && cur_was_running)) next->slice_start_ns = now;
    next->state = VState::Running;
    next->since_ns = now;
    next->stats.schedules++;
    next->stats.pcpus_used.set(p);
    if (next != cur) pc.stats.context_switches++;
  } else {
    pc.stats.idle_picks++;
  }
  if (cur && next != cur) cur->last_run_ns = now;  // schedule.c: prev->last_run_time = now
  pc.curr = next;
  update_runnable(pc);
  set_idle(p, next == nullptr);
  KS_PROBE(sched_pick, p, next ? int64_t(next->id) : -1, next ? int64_t(next->dom->index) : -1,
           cur ? int64_t(cur->id) : -1);
  if (requeued && next != cur) KS_PROBE(sched_preempt, p, cur->id, next ? int64_t(next->id) : -1);
  return {next, now + params_.tslice_ns};
}

// --- load balancing (csched_load_balance, csched_runq_steal) ------------------------------------

// __vcpu_has_soft_affinity: soft affinity matters only if it excludes some pCPU the hard affinity
// allows. With the default (all pCPUs) no vCPU has one, and the soft step steals nothing.
bool CreditScheduler::has_soft_affinity(const SchedVcpu& v) const {
  return v.soft_affinity.count() != npcpus() && !v.affinity.subset_of(v.soft_affinity) &&
         v.soft_affinity.intersects(v.affinity);
}

bool CreditScheduler::peer_worth_trying(Pcpu& thief, const Pcpu& peer) {
  const uint32_t q = thief.index;
  const bool in_bitmap = peer.affinity_bits.test(q, std::memory_order_relaxed);
  switch (params_.balance) {
    case Balance::Affinity:
      if (in_bitmap) return true;
      thief.stats.balance.skipped_bitmap++;
      return false;
    case Balance::Counted:
      if (peer.nr_runnable.load(std::memory_order_relaxed) > 1) return true;
      thief.stats.balance.skipped_count++;
      return false;
    case Balance::Hybrid:
      if (peer.nr_runnable.load(std::memory_order_relaxed) <= 1) {
        thief.stats.balance.skipped_count++;
        return false;
      }
      if (peer.unrestricted.load(std::memory_order_relaxed) > 0 || in_bitmap) return true;
      thief.stats.balance.skipped_bitmap++;
      return false;
    case Balance::Xen:
    case Balance::None: return true;
  }
  return true;
}

// csched_runq_steal: caller holds the peer's lock. Walk its queue from the head, stop at the first
// vCPU not better than ours, take the first one that may run here in this balance step, is not
// running and is not cache-hot (__csched_vcpu_is_migrateable, __csched_vcpu_is_cache_hot: switched
// out less than --migration-delay ago; the delay is 0 by default, as vcpu_migration_delay).
SchedVcpu* CreditScheduler::runq_steal(Pcpu& thief, Pcpu& peer, int min_pri, int step,
                                       uint64_t now) {
  peer.held();
  if (peer.curr == nullptr) return nullptr;  // an idle peer is about to run its queue itself
  for (SchedVcpu* v : peer.runq) {
    if (v->pri.load(std::memory_order_relaxed) <= min_pri) break;
    if (step == kSoft && !v->has_soft) continue;
    const CpuSet& mask = step == kSoft ? v->soft_affinity : v->affinity;
    if (v == peer.curr) continue;
    // (a peer's clock may be a little ahead of ours: switched out "after now" is hot too)
    if (params_.migration_delay_ns && now < v->last_run_ns + params_.migration_delay_ns) {
      thief.stats.balance.skipped_hot++;
      continue;
    }
    if (!mask.test(thief.index) || !v->affinity.test(thief.index)) continue;
    runq_remove(peer, *v);
    v->processor.store(thief.index, std::memory_order_release);
    v->stats.migrations++;
    return v;
  }
  return nullptr;
}

SchedVcpu* CreditScheduler::load_balance(Pcpu& pc, int local_pri, uint64_t now) {
  uint64_t t0 = locks::lock_clock_ns();
  BalanceStats& st = pc.stats.balance;
  if (local_pri == int(Prio::Idle))
    st.attempts_idle++;
  else
    st.attempts_over++;
  const uint32_t np = npcpus();
  const bool rotate = params_.balance == Balance::Counted;  // 4.9's balance_bias
  SchedVcpu* found = nullptr;
  // Soft-affinity step, then hard; in each, own node first, then the others in turn.
  for (int step = kSoft; step <= kHard && !found; step++) {
    for (size_t k = 0; k < nodes_.size() && !found; k++) {
      const uint32_t ni = uint32_t((pc.node_idx + k) % nodes_.size());
      // Busy peers of this node ("workers"), visited from the first (4.7) or after the bias.
      CpuSet& idle = pc.scratch.idle;
      read_idlers(idle);
      std::vector<uint32_t>& workers = pc.scratch.workers;
      workers.clear();
      for (uint32_t q = 0; q < np; q++)
        if (q != pc.index && pcpus_[q]->node_idx == ni && !idle.test(q)) workers.push_back(q);
      if (workers.empty()) continue;
      size_t first = 0;
      if (rotate) {
        uint32_t bias = balance_bias_[ni].load(std::memory_order_relaxed);
        first = size_t(std::upper_bound(workers.begin(), workers.end(), bias) - workers.begin()) %
                workers.size();
      }
      for (size_t i = 0; i < workers.size() && !found; i++) {
        Pcpu& peer = *pcpus_[workers[(first + i) % workers.size()]];
        st.peers_visited++;
        if (!peer_worth_trying(pc, peer)) continue;
        st.trylocks++;
        RunqGuard g(peer, std::try_to_lock);  // never spin on a peer's lock: could deadlock
        KS_PROBE(sched_trylock, pc.index, peer.index, g ? 1 : 0);
        if (!g) {
          st.trylock_failures++;
          continue;
        }
        found = runq_steal(pc, peer, local_pri, step, now);
        if (found) {
          st.steals++;
          KS_PROBE(sched_steal, pc.index, peer.index, found->id, found->dom->index);
          if (rotate) balance_bias_[ni].store(peer.index, std::memory_order_relaxed);
        }
      }
    }
  }
  st.balance_ns += locks::lock_clock_ns() - t0;
  return found;
}

// --- ticks, accounting (csched_tick, csched_vcpu_acct, csched_acct) -----------------------------

// __csched_vcpu_acct_start: on the front of its domain's active list, the domain on the front of
// the active domains. With `may_wait` false it only tries the accounting lock: while a pass runs
// on the accounting thread (which the host may preempt), a pCPU's tick does not spin behind it;
// the vCPU stays inactive and the next tick that finds it running tries again.
bool CreditScheduler::acct_start(SchedVcpu& v, bool may_wait) {
  if (may_wait) {
    Guard<AnyLock> g(*acct_lock_);
    acct_start_locked(v);
    return true;
  }
  locks::TryGuard<AnyLock> g(*acct_lock_);
  if (g.owns()) acct_start_locked(v);
  return g.owns();
}

void CreditScheduler::acct_start_locked(SchedVcpu& v) {
  if (v.active.load(std::memory_order_relaxed) || v.done.load(std::memory_order_relaxed)) return;
  SchedDomain& d = *v.dom;
  v.active.store(true, std::memory_order_relaxed);
  d.active.push_front(&v);
  v.active_pos = d.active.begin();
  active_weight_ += d.weight;
  if (!d.in_active_doms) {
    active_doms_.push_front(&d);
    d.active_pos = active_doms_.begin();
    d.in_active_doms = true;
  }
}

// __csched_vcpu_acct_stop_locked.
void CreditScheduler::acct_stop_locked(SchedVcpu& v) {
  SchedDomain& d = *v.dom;
  d.active.erase(v.active_pos);
  v.active.store(false, std::memory_order_relaxed);
  active_weight_ -= d.weight;
  if (d.active.empty()) {
    active_doms_.erase(d.active_pos);
    d.in_active_doms = false;
  }
}

bool CreditScheduler::tick(uint32_t p, uint64_t now) {
  Pcpu& pc = *pcpus_[p];
  SchedVcpu* to_activate = nullptr;
  {
    RunqGuard g(pc);
    pc.stats.ticks++;
    SchedVcpu* cur = pc.curr;
    if (cur && cur->state == VState::Running) {
      bool settled = true;  // active a while (rr: no accounting, always)
      if (!params_.round_robin) {
        // csched_vcpu_acct: a BOOSTed vCPU found running by a tick is back to UNDER.
        int boost = int(Prio::Boost);
        cur->pri.compare_exchange_strong(boost, int(Prio::Under), std::memory_order_relaxed);
        burn(*cur, now);
        if (!cur->active.load(std::memory_order_relaxed)) {
          to_activate = cur;
          settled = false;
        }
      }
      if (settled && cpu_pick(pc, *cur) != p) {
        // Active a while and better off on an idler: move it (_VPF_migrating) at the reschedule
        // this asks for (cpu_raise_softirq on itself: the caller's loop schedules next).
        cur->migrating = true;
        pc.stats.migrate_running++;
        pc.need_resched.store(true, std::memory_order_release);
      }
    }
    uint64_t gen = acct_gen_.load(std::memory_order_acquire);
    if (gen != pc.last_acct_gen) {
      runq_sort(pc);
      pc.last_acct_gen = gen;
    }
  }
  if (to_activate && !acct_start(*to_activate, params_.account_on_tick))
    pc.stats.activations_deferred++;  // pc.stats: only p's thread ticks p
  if (p != 0 || params_.round_robin || now < next_acct_ns_) return false;
  while (next_acct_ns_ <= now) next_acct_ns_ += params_.tslice_ns;
  if (!params_.account_on_tick) return true;
  account(now);
  return false;
}

void CreditScheduler::account(uint64_t now) {
  const int64_t per_slice = credits_per_tslice();
  Guard<AnyLock> g(*acct_lock_);
  accounting_passes_++;
  const int64_t weight_total = active_weight_;
  int64_t credit_total = per_slice * npcpus();
  if (credit_balance_ < 0) credit_total -= credit_balance_;  // converge the balance towards 0
  if (weight_total == 0) {
    credit_balance_ = 0;
    return;
  }
  int64_t weight_left = weight_total, balance = 0, credit_cap = 0;
  bool credit_xtra = false;
  for (auto it = active_doms_.begin(); it != active_doms_.end();) {
    SchedDomain& d = **it;
    ++it;  // d may move to the front below
    const int64_t n = int64_t(d.active.size());
    weight_left -= int64_t(d.weight) * n;
    // A domain earns at most one slice per active vCPU, more only while the balance is negative.
    int64_t credit_peak = n * per_slice;
    if (credit_balance_ < 0)
      credit_peak += (-credit_balance_ * d.weight * n + (weight_total - 1)) / weight_total;
    if (d.cap) {
      credit_cap = (int64_t(d.cap) * per_slice + 99) / 100;
      credit_peak = std::min(credit_peak, credit_cap);
      credit_cap = (credit_cap + (n - 1)) / n;
    }
    int64_t credit_fair = (credit_total * d.weight * n + (weight_total - 1)) / weight_total;
    if (credit_fair < credit_peak) {
      credit_xtra = true;
    } else {
      if (weight_left != 0)  // give other domains a chance at the unused credits
        credit_total +=
            ((credit_fair - credit_peak) * weight_total + (weight_left - 1)) / weight_left;
      if (credit_xtra) active_doms_.splice(active_doms_.begin(), active_doms_, d.active_pos);
      credit_fair = credit_peak;
    }
    credit_fair = (credit_fair + (n - 1)) / n;  // per vCPU
    for (auto vit = d.active.begin(); vit != d.active.end();) {
      SchedVcpu& v = **vit;
      ++vit;  // v may leave the active list below
      int credit =
          v.credit.fetch_add(int(credit_fair), std::memory_order_relaxed) + int(credit_fair);
      if (credit < 0) {
        v.pri.store(int(Prio::Over), std::memory_order_relaxed);
        if (d.cap && credit < -credit_cap && !v.parked.load(std::memory_order_relaxed)) park(v);
        if (credit < -per_slice) {
          credit = int(-per_slice);
          v.credit.store(credit, std::memory_order_relaxed);
        }
      } else {
        v.pri.store(int(Prio::Under), std::memory_order_relaxed);
        if (v.parked.load(std::memory_order_relaxed)) unpark(v, now);
        if (credit > per_slice) {  // stops earning; half the credit carries over
          acct_stop_locked(v);
          credit /= 2;
          v.credit.store(credit, std::memory_order_relaxed);
        }
      }
      balance += credit;
    }
  }
  credit_balance_ = balance;
  acct_gen_.fetch_add(1, std::memory_order_release);  // every pCPU re-sorts at its next tick
}

// vcpu_pause_nosync from csched_acct: a parked vCPU is not runnable. Under the accounting lock;
// `parked` changes only here and in unpark(), under v's run-queue lock, so it is stable for
// whoever holds that lock (schedule, wake, runq_insert).
void CreditScheduler::park(SchedVcpu& v) {
  RunqGuard g(pcpus_, v);
  Pcpu& pc = g.pcpu();
  if (v.parked.load(std::memory_order_relaxed) || v.state == VState::Done) return;
  v.parked.store(true, std::memory_order_relaxed);
  v.stats.parks++;
  if (v.queued) runq_remove(pc, v);
  if (pc.curr == &v) tickle(pc, pc.index, true);  // csched_vcpu_sleep: deschedule it
}

// vcpu_unpause from csched_acct. 4.7 clears PARKED (test_and_clear_bit) *before* the unpause,
// whatever its comment says, so csched_vcpu_wake finds an UNDER, unparked vCPU and BOOSTs it:
// we follow the code.
void CreditScheduler::unpark(SchedVcpu& v, uint64_t now) {
  RunqGuard g(pcpus_, v);
  Pcpu& pc = g.pcpu();
  if (!v.parked.load(std::memory_order_relaxed)) return;
  v.parked.store(false, std::memory_order_relaxed);
  if (v.state == VState::Runnable && !v.queued && pc.curr != &v) {
    int under = int(Prio::Under);
    if (!params_.round_robin &&
        v.pri.compare_exchange_strong(under, int(Prio::Boost), std::memory_order_relaxed))
      v.stats.boosts++;
    runq_insert(pc, v, now);
    runq_tickle(pc, v);
  }
}

// --- block / wake / yield / finish -------------------------------------------------------------

bool CreditScheduler::block(uint32_t p, SchedVcpu& v, uint64_t now) {
  Pcpu& pc = *pcpus_[p];
  RunqGuard g(pc);
  assert(pc.curr == &v);
  if (v.state != VState::Running) return false;  // finished meanwhile (its VM crashed): no block
  if (v.wake_pending) {
    v.wake_pending = false;
    v.block_result = 0;
    return false;
  }
  burn(v, now);
  v.state = VState::Blocked;
  v.block_gen++;
  update_runnable(pc);
  pc.need_resched.store(true, std::memory_order_release);
  return true;
}

void CreditScheduler::yield(uint32_t p, SchedVcpu& v) {
  Pcpu& pc = *pcpus_[p];
  RunqGuard g(pc);
  v.yield_flag = true;
  pc.need_resched.store(true, std::memory_order_release);
}

void CreditScheduler::tickle(Pcpu& from, uint32_t q, bool preempt) {
  from.stats.tickles++;
  if (preempt) from.stats.tickle_preempts++;
  KS_PROBE(sched_tickle, from.index, q, int(preempt));
  pcpus_[q]->need_resched.store(true, std::memory_order_release);
  signals_.tickle(q);
}

// __runq_tickle: caller holds pc's lock, v is queued there. Run v here if this pCPU is idle, or
// if no pCPU idles and v beats the running vCPU. Otherwise, if some idler may run v, wake one
// idler and leave the running vCPU alone; preempt only when no idler may run v.
void CreditScheduler::runq_tickle(Pcpu& pc, SchedVcpu& v) {
  pc.held();
  const int new_pri = v.pri.load(std::memory_order_relaxed);
  const int cur_pri = pc.curr ? pc.curr->pri.load(std::memory_order_relaxed) : int(Prio::Idle);
  const CpuSet& idle = pc.scratch.idle;
  read_idlers(pc.scratch.idle);
  const bool idlers_empty = idle.empty();
  if (cur_pri == int(Prio::Idle) || (idlers_empty && new_pri > cur_pri)) {
    tickle(pc, pc.index, cur_pri != int(Prio::Idle));
    return;
  }
  if (idlers_empty) return;
  for (int step = kSoft; step <= kHard; step++) {
    if (step == kSoft && !v.has_soft) continue;
    CpuSet& mask = pc.scratch.mask;
    mask = step == kSoft ? v.soft_affinity : v.affinity;
    if (step == kSoft) mask &= v.affinity;
    mask &= idle;
    if (mask.empty() && step == kSoft) continue;
    if (mask.empty()) {
      if (new_pri > cur_pri) {
        // v preempts cur here; cur moves to an idler of its own if it has one (_VPF_migrating).
        if (pc.curr->affinity.intersects(idle)) {
          pc.curr->migrating = true;
          pc.stats.migrate_kicked_away++;
        }
        tickle(pc, pc.index, true);
      }
      return;
    }
    // One idler that may run v, cycling from the last one tickled. 4.7 cycled over every idler
    // (prv->idlers), so it could wake one outside v's affinity and never the one that may run
    // it; Xen 4.8 cycles over these (f83fc393b2, "fix mask to be used for tickling").
    const uint32_t q = mask.cycle(pc.last_tickle);
    pc.last_tickle = q;
    tickle(pc, q, false);
    return;
  }
}

// _csched_cpu_pick for v, current on pc: pc itself if it idles but for v (IS_RUNQ_IDLE: nothing
// queued), else an idler in v's affinity (soft step first, if v has one), cycling from pc; else
// pc. 4.7 then prefers idlers with more idle SMT siblings or cores; kvmscale's pCPUs have no
// such topology, so every idler counts the same.
uint32_t CreditScheduler::cpu_pick(Pcpu& pc, const SchedVcpu& v) {
  pc.held();
  CpuSet& idlers = pc.scratch.idle;
  read_idlers(idlers);
  if (pc.runq.empty()) idlers.set(pc.index);
  for (int step = kSoft; step <= kHard; step++) {
    if (step == kSoft && !v.has_soft) continue;
    CpuSet& mask = pc.scratch.mask;
    mask = step == kSoft ? v.soft_affinity : v.affinity;
    mask &= v.affinity;
    mask &= idlers;
    if (mask.test(pc.index)) return pc.index;
    if (!mask.empty()) return mask.cycle(pc.index);
  }
  return pc.index;
}

// vcpu_migrate, after schedule() took v off its pCPU and named the target its processor: queue
// it there and tickle, as csched_vcpu_wake would, without a BOOST (CSCHED_FLAG_VCPU_MIGRATING).
// Between the two locks v is Runnable, queued nowhere and current nowhere: a wake meanwhile
// stays pending, and a finish() or park() under the target's lock leaves it off the queue here
// (unpark() queues it itself).
void CreditScheduler::migrate(SchedVcpu& v, uint64_t now) {
  RunqGuard g(pcpus_, v);
  Pcpu& pc = g.pcpu();
  if (v.state != VState::Runnable || v.queued || pc.curr == &v ||
      v.parked.load(std::memory_order_relaxed))
    return;
  runq_insert(pc, v, now);
  runq_tickle(pc, v);
}

void CreditScheduler::wake(SchedVcpu& v, uint64_t now, bool timed_out, uint64_t gen) {
  RunqGuard g(pcpus_, v);
  Pcpu& pc = g.pcpu();
  if (v.state == VState::Blocked && (!timed_out || gen == v.block_gen)) {
    v.block_result = timed_out ? 1 : 0;
    v.block_result_due = true;
    v.stats.wakes++;
    if (pc.curr == &v) {
      // Still current: its pCPU has not rescheduled since it blocked. It is simply running again
      // (csched_vcpu_wake's "vcpu_wake_running"); queueing it would let a peer steal it.
      v.state = VState::Running;
      update_runnable(pc);
    } else {
      v.state = VState::Runnable;
      const bool parked = v.parked.load(std::memory_order_relaxed);
      int under = int(Prio::Under);
      if (!params_.round_robin && !parked &&
          v.pri.compare_exchange_strong(under, int(Prio::Boost), std::memory_order_relaxed))
        v.stats.boosts++;
      if (!parked) {  // a parked vCPU waits for accounting to unpark it
        runq_insert(pc, v, now);
        runq_tickle(pc, v);
      }
    }
  } else if (!timed_out && (v.state == VState::Running || v.state == VState::Runnable)) {
    v.wake_pending = true;
  }
}

void CreditScheduler::finish(SchedVcpu& v, uint64_t now) {
  {
    RunqGuard g(pcpus_, v);
    Pcpu& pc = g.pcpu();
    if (v.queued) {
      if (now > v.since_ns) v.stats.wait_ns += now - v.since_ns;
      runq_remove(pc, v);
    }
    if (v.state == VState::Running) burn(v, now);
    if (pc.curr == &v) tickle(pc, pc.index, true);  // its pCPU must drop it
    v.state = VState::Done;
    v.done.store(true, std::memory_order_relaxed);  // read by acct_start under the acct lock
    update_runnable(pc);
  }
  Guard<AnyLock> g(*acct_lock_);  // after `done`: a concurrent activation is undone here or sees it
  if (v.active.load(std::memory_order_relaxed)) acct_stop_locked(v);
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
                     {"tickles", pc->stats.tickles},
                     {"tickle_preempts", pc->stats.tickle_preempts},
                     {"activations_deferred", pc->stats.activations_deferred},
                     {"migrate_running", pc->stats.migrate_running},
                     {"migrate_kicked_away", pc->stats.migrate_kicked_away},
                     {"balance",
                      {{"attempts_idle", b.attempts_idle},
                       {"attempts_over", b.attempts_over},
                       {"peers_visited", b.peers_visited},
                       {"skipped_bitmap", b.skipped_bitmap},
                       {"skipped_count", b.skipped_count},
                       {"trylocks", b.trylocks},
                       {"trylock_failures", b.trylock_failures},
                       {"skipped_hot", b.skipped_hot},
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
          {"migration_delay_ns", params_.migration_delay_ns},
          {"credits_per_tslice", credits_per_tslice()},
          {"accounting_passes", accounting_passes_},
          {"pcpus", pcpus},
          {"vcpus", vcpus}};
}

}  // namespace kvmscale::sched
