#include "sim/lock.hpp"

#include <stdexcept>

namespace kvmscale::sim {

using locks::Strategy;

Time LockCosts::handoff_ns(Strategy s, uint64_t k) const {
  switch (s) {
    case Strategy::Ticket: return line_ns * k / 2;
    case Strategy::Mcs:
    case Strategy::Clh: return line_ns;
    case Strategy::Ttas: return line_ns * k;
    case Strategy::Pthread: return futex_wake_ns;
    case Strategy::SpinYield: return yield_ns;
  }
  return line_ns;
}

bool LockCosts::random_winner(Strategy s) {
  return s == Strategy::Ttas || s == Strategy::SpinYield;
}

bool SimLock::lock(void (*poll)(void*), void* poll_ctx) {
  Actor* me = engine_.current();
  if (!me) throw std::logic_error("sim: a simulated lock taken outside an actor");
  if (owner_ == me) throw std::logic_error("sim: actor '" + me->name() + "' relocks a lock");
  if (owner_ == nullptr) {
    owner_ = me;
    engine_.advance(costs_.line_ns);
    return false;
  }
  // Interrupts while waiting (cross-calls aimed at this pCPU) are not simulated yet: poll once,
  // as a real waiter does before it first spins.
  if (poll) poll(poll_ctx);
  waiters_.wait();  // unlock() made us the owner and charged the hand-off
  return true;
}

bool SimLock::try_lock() {
  Actor* me = engine_.current();
  if (!me) throw std::logic_error("sim: a simulated lock tried outside an actor");
  const bool ok = owner_ == nullptr;
  if (ok) owner_ = me;
  engine_.advance(costs_.line_ns);
  return ok;
}

void SimLock::unlock() {
  if (owner_ != engine_.current())
    throw std::logic_error("sim: a simulated lock released by an actor that does not hold it");
  const size_t k = waiters_.size();
  if (k == 0) {
    owner_ = nullptr;
    return;
  }
  const size_t i = LockCosts::random_winner(strategy_)
                       ? size_t(std::uniform_int_distribution<size_t>(0, k - 1)(engine_.rng()))
                       : 0;
  handoffs_++;
  owner_ = &waiters_.wake(i, costs_.handoff_ns(strategy_, k));
}

std::unique_ptr<locks::ExternalLock> SimLockFactory::make(Strategy s, const std::string&,
                                                          const std::string&) {
  return std::make_unique<SimLock>(engine_, s, costs_);
}

}  // namespace kvmscale::sim
