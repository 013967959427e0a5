#include "sim/engine.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <boost/context/detail/fcontext.hpp>
#include <cassert>
#include <stdexcept>
#include <utility>

// Sanitizers must be told about every stack switch (docs/sim.md): ASan tracks the current stack
// (__sanitizer_{start,finish}_switch_fiber) and TSan keeps one shadow state per fiber.
#if defined(__SANITIZE_ADDRESS__)
#define KS_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KS_SIM_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define KS_SIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KS_SIM_TSAN 1
#endif
#endif
#if KS_SIM_ASAN
#include <sanitizer/asan_interface.h>
#endif
#if KS_SIM_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace kvmscale::sim {

namespace fc = boost::context::detail;

// One execution context: the thread's own stack (run()'s) or an actor's.
struct Context {
  fc::fcontext_t fctx = nullptr;  // where to jump to resume it (set when it switches away)
  void* map = nullptr;            // an actor's mapping: guard page + stack
  size_t map_bytes = 0;
  const void* stack_bottom = nullptr;  // for ASan: the stack's lowest address and size
  size_t stack_size = 0;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
  Engine* engine = nullptr;  // the main context's engine

  ~Context() {
#if KS_SIM_TSAN
    if (map && tsan_fiber) __tsan_destroy_fiber(tsan_fiber);
#endif
    if (map) munmap(map, map_bytes);
  }
};

namespace {

// Switches from `from` (running now) to `to`; returns when something switches back to `from`.
// `leaving`: `from` never runs again (ASan then drops its fake stack).
void switch_to(Context& from, Context& to, bool leaving = false) {
#if KS_SIM_ASAN
  __sanitizer_start_switch_fiber(leaving ? nullptr : &from.asan_fake_stack, to.stack_bottom,
                                 to.stack_size);
#endif
#if KS_SIM_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
  (void)leaving;
  fc::transfer_t t = fc::jump_fcontext(to.fctx, &from);
  // Back in `from`: t.data is the context that jumped here, t.fctx where it stopped.
  auto* prev = static_cast<Context*>(t.data);
  prev->fctx = t.fctx;
#if KS_SIM_ASAN
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, &prev->stack_bottom, &prev->stack_size);
#endif
}

size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }

}  // namespace

Actor::Actor(Engine& e, uint32_t id, std::string name, std::function<void()> body)
    : engine_(e), id_(id), name_(std::move(name)), body_(std::move(body)) {}
Actor::~Actor() = default;

Engine::Engine(uint64_t seed, size_t stack_bytes)
    : rng_(seed), stack_bytes_(stack_bytes), main_(std::make_unique<Context>()) {
  clock_ = {[](const void* e) { return static_cast<const Engine*>(e)->now_; }, this};
  main_->engine = this;
#if KS_SIM_ASAN || KS_SIM_TSAN
  stack_bytes_ *= 4;  // instrumented frames are larger
#endif
  const size_t page = page_size();
  stack_bytes_ = (stack_bytes_ + page - 1) / page * page;
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
  if (cancelling_) return;
  cancelling_ = true;
  locks::ClockOverride clock(clock_);  // destructors on the unwound stacks read virtual time
#if KS_SIM_TSAN
  main_->tsan_fiber = __tsan_get_current_fiber();
#endif
  for (auto& a : actors_) {
    if (a->started_ && a->state_ != Actor::State::Finished) resume(*a);
  }
  heap_.clear();
  actors_.clear();  // frees the stacks
}

size_t Engine::actors_alive() const {
  return size_t(
      std::count_if(actors_.begin(), actors_.end(), [](const auto& a) { return !a->finished(); }));
}

size_t Engine::stacks() const {
  return size_t(std::count_if(actors_.begin(), actors_.end(),
                              [](const auto& a) { return a->ctx_ != nullptr; }));
}

void Engine::push(Time t, Actor* a, uint32_t fn) {
  heap_.push_back({t, seq_++, a, fn});
  std::push_heap(heap_.begin(), heap_.end(), Later{});
}

void Engine::schedule(Actor& a, Time t) {
  assert(a.state_ != Actor::State::Ready && a.state_ != Actor::State::Finished);
  a.state_ = Actor::State::Ready;
  push(std::max(t, now_), &a, 0);
}

Actor& Engine::spawn(std::string name, std::function<void()> body, Time start) {
  if (cancelling_) throw std::logic_error("sim: spawn after shutdown");
  auto& a = *actors_.emplace_back(
      new Actor(*this, uint32_t(actors_.size()), std::move(name), std::move(body)));
  a.state_ = Actor::State::Sleeping;
  schedule(a, start);
  return a;
}

void Engine::call_at(Time t, std::function<void()> fn) {
  uint32_t i;
  if (free_fns_.empty()) {
    i = uint32_t(fns_.size());
    fns_.push_back(std::move(fn));
  } else {
    i = free_fns_.back();
    free_fns_.pop_back();
    fns_[i] = std::move(fn);
  }
  push(std::max(t, now_), nullptr, i);
}

void Engine::fiber_main(void* transfer) {
  auto& t = *static_cast<fc::transfer_t*>(transfer);
  auto* from = static_cast<Context*>(t.data);
  from->fctx = t.fctx;
#if KS_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &from->stack_bottom, &from->stack_size);
#endif
  Engine& e = *from->engine;
  Actor& a = *e.current_;
  try {
    a.body_();
  } catch (const Cancelled&) {
  } catch (...) {
    if (!e.cancelling_) e.error_ = std::current_exception();
  }
  a.state_ = Actor::State::Finished;
  e.switches_++;
  switch_to(*a.ctx_, *e.main_, true);
  __builtin_unreachable();
}

uint64_t Engine::run(Time until) {
  if (current_) throw std::logic_error("sim: run() called from an actor");
  if (cancelling_) throw std::logic_error("sim: run() after shutdown");
  locks::ClockOverride clock(clock_);
#if KS_SIM_TSAN
  main_->tsan_fiber = __tsan_get_current_fiber();
#endif
  uint64_t ran = 0;
  while (!heap_.empty() && heap_.front().time <= until) {
    std::pop_heap(heap_.begin(), heap_.end(), Later{});
    Event ev = heap_.back();
    heap_.pop_back();
    now_ = ev.time;
    events_++;
    ran++;
    if (tracing_) trace_.push_back({ev.time, ev.seq, ev.actor ? int64_t(ev.actor->id_) : -1});
    if (ev.actor) {
      resume(*ev.actor);
    } else {
      std::function<void()> fn = std::move(fns_[ev.fn]);
      free_fns_.push_back(ev.fn);
      fn();
    }
    if (error_) {
      std::exception_ptr e = std::exchange(error_, nullptr);
      std::rethrow_exception(e);
    }
  }
  if (until != kForever) {
    if (until > now_) now_ = until;
  } else if (actors_alive() > 0) {
    // No event is left, so nothing can wake the actors still waiting.
    std::string names;
    for (const auto& a : actors_)
      if (!a->finished()) names += (names.empty() ? "'" : ", '") + a->name_ + "'";
    throw Deadlock("sim: deadlock at " + std::to_string(now_) +
                   " ns: no event is left and these actors wait: " + names);
  }
  return ran;
}

void Engine::resume(Actor& a) {
  if (!a.started_) {
    // The stack: a guard page at the low end catches an overflow.
    auto& c = *(a.ctx_ = std::make_unique<Context>());
    const size_t page = page_size();
    c.map_bytes = stack_bytes_ + page;
    c.map = mmap(nullptr, c.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c.map == MAP_FAILED) {
      c.map = nullptr;
      throw std::runtime_error("sim: cannot map a stack for actor '" + a.name_ + "'");
    }
    if (mprotect(c.map, page, PROT_NONE) != 0) {
      munmap(c.map, c.map_bytes);
      c.map = nullptr;
      throw std::runtime_error("sim: cannot protect the guard page of actor '" + a.name_ + "'");
    }
    c.stack_bottom = static_cast<char*>(c.map) + page;
    c.stack_size = stack_bytes_;
    c.fctx = fc::make_fcontext(static_cast<char*>(c.map) + c.map_bytes, stack_bytes_,
                               [](fc::transfer_t t) { fiber_main(&t); });
#if KS_SIM_TSAN
    c.tsan_fiber = __tsan_create_fiber(0);
#endif
    a.started_ = true;
  }
  a.state_ = Actor::State::Running;
  current_ = &a;
  switches_++;
  switch_to(*main_, *a.ctx_);
  current_ = nullptr;
  if (a.state_ == Actor::State::Finished) {
    // Its stack is no longer in use: free it now (a run may spawn many short actors).
    a.ctx_.reset();
    a.body_ = nullptr;
  }
}

void Engine::suspend() {
  Actor& a = *current_;
  switches_++;
  switch_to(*a.ctx_, *main_);
  if (cancelling_) throw Cancelled{};
}

void Engine::sleep_until(Time t) {
  Actor* a = current_;
  if (!a) throw std::logic_error("sim: sleep_until() outside an actor");
  a->state_ = Actor::State::Sleeping;
  schedule(*a, t);
  suspend();
}

void WaitQueue::wait() {
  Actor* a = engine_.current_;
  if (!a) throw std::logic_error("sim: WaitQueue::wait() outside an actor");
  a->state_ = Actor::State::Waiting;
  a->waiting_on_ = this;
  waiters_.push_back(a);
  try {
    engine_.suspend();
  } catch (const Cancelled&) {
    // shutdown() unwinds it: leave the queue (if it still exists), or a release run later
    // (another actor unwinding through a lock guard) would hand the lock to a finished actor.
    if (WaitQueue* q = std::exchange(a->waiting_on_, nullptr))
      q->waiters_.erase(std::find(q->waiters_.begin(), q->waiters_.end(), a));
    throw;
  }
}

WaitQueue::~WaitQueue() {
  for (Actor* a : waiters_) a->waiting_on_ = nullptr;
}

Actor& WaitQueue::wake(size_t i, Time delay) {
  Actor& a = *waiters_.at(i);
  waiters_.erase(waiters_.begin() + ptrdiff_t(i));
  a.waiting_on_ = nullptr;
  engine_.schedule(a, engine_.now_ + delay);
  return a;
}

size_t WaitQueue::wake_all(Time delay) {
  size_t n = waiters_.size();
  while (!waiters_.empty()) wake(0, delay);
  return n;
}

}  // namespace kvmscale::sim
