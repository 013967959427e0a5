// The discrete-event engine of --accel sim: virtual time, an event heap ordered by (time,
// sequence), stackful actors (fibers on Boost.Context's fcontext) on the calling host thread and
// a seeded PRNG. Nothing here reads the host's clock: the same seed and the same actors give the
// same events in the same order (docs/sim.md).
//
// An actor is a function running on its own stack. It suspends anywhere in its call stack
// (sleep_until, advance, WaitQueue::wait), e.g. inside a lock() deep in policy code, and the
// engine resumes it when its event comes. While run() runs, the thread's clock
// (locks/clock.hpp) is the engine's virtual time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "locks/clock.hpp"

namespace kvmscale::sim {

using Time = uint64_t;  // virtual ns
inline constexpr Time kForever = ~Time{0};

class Engine;
class WaitQueue;
struct Context;

class Actor {
 public:
  ~Actor();
  uint32_t id() const { return id_; }  // spawn order, from 0
  const std::string& name() const { return name_; }
  bool finished() const { return state_ == State::Finished; }

 private:
  friend class Engine;
  friend class WaitQueue;
  enum class State { Ready, Running, Sleeping, Waiting, Finished };
  Actor(Engine& e, uint32_t id, std::string name, std::function<void()> body);

  Engine& engine_;
  uint32_t id_;
  std::string name_;
  std::function<void()> body_;
  State state_ = State::Ready;
  bool started_ = false;
  WaitQueue* waiting_on_ = nullptr;  // the queue it waits in, while it does and the queue lives
  std::unique_ptr<Context> ctx_;
};

// Thrown at an actor's suspension point when the engine is destroyed before the actor finished:
// it unwinds the actor's stack (destructors run). Do not swallow it.
struct Cancelled {};

// Thrown by run() without a limit when no event is left while actors still wait: nothing can ever
// wake them (e.g. two actors taking two locks in opposite orders). Names the waiting actors.
struct Deadlock : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Engine {
 public:
  struct Trace {
    Time time;
    uint64_t seq;
    int64_t actor;  // -1: a callback event
    bool operator==(const Trace&) const = default;
  };

  // stack_bytes: each actor's stack (a guard page below it catches an overflow).
  explicit Engine(uint64_t seed, size_t stack_bytes = 256 * 1024);
  // Calls shutdown().
  ~Engine();
  // Unwinds the actors that have not finished (see Cancelled) and frees every stack. Call it
  // before destroying what those actors' stacks refer to (e.g. a lock a suspended actor holds
  // through a Guard); the engine cannot run afterwards.
  void shutdown();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  Time now() const { return now_; }
  std::mt19937_64& rng() { return rng_; }

  // A new actor that starts at `start` (not before now()).
  Actor& spawn(std::string name, std::function<void()> body, Time start = 0);
  // An event that runs fn on the engine's own stack at `t` (it must not suspend).
  void call_at(Time t, std::function<void()> fn);

  // Runs events in (time, sequence) order while there are some at or before `until`. Returns the
  // number run. An exception escaping an actor or a callback stops the run and is rethrown here.
  uint64_t run(Time until = kForever);

  uint64_t events() const { return events_; }      // run so far
  uint64_t switches() const { return switches_; }  // context switches so far
  size_t pending() const { return heap_.size(); }
  size_t actors_alive() const;
  size_t stacks() const;  // mapped now: a finished actor's stack is freed at once

  // Records every event run (for determinism checks); off by default.
  void set_tracing(bool on) { tracing_ = on; }
  const std::vector<Trace>& trace() const { return trace_; }

  // ---- inside an actor ---------------------------------------------------------------------
  Actor* current() const { return current_; }
  void sleep_until(Time t);
  void advance(Time d) { sleep_until(now_ + d); }
  // Lets the other events at now() run first.
  void yield() { sleep_until(now_); }

 private:
  friend class WaitQueue;
  friend class Actor;
  struct Event {
    Time time;
    uint64_t seq;
    Actor* actor;  // null: fns_[fn]
    uint32_t fn;
  };
  struct Later {
    bool operator()(const Event& a, const Event& b) const {
      return a.time != b.time ? a.time > b.time : a.seq > b.seq;
    }
  };

  void push(Time t, Actor* a, uint32_t fn);
  void schedule(Actor& a, Time t);         // a becomes Ready at t
  void suspend();                          // the current actor gives the CPU back to run()
  void resume(Actor& a);                   // run(): switches to a until it suspends or finishes
  static void fiber_main(void* transfer);  // an actor's first frame; never returns
  void free_stacks();

  std::mt19937_64 rng_;
  size_t stack_bytes_;
  Time now_ = 0;
  uint64_t seq_ = 0, events_ = 0, switches_ = 0;
  std::vector<Event> heap_;
  std::vector<std::function<void()>> fns_;
  std::vector<uint32_t> free_fns_;
  std::deque<std::unique_ptr<Actor>> actors_;
  std::unique_ptr<Context> main_;  // the context run() is called on
  Actor* current_ = nullptr;
  bool cancelling_ = false;
  std::exception_ptr error_;
  bool tracing_ = false;
  std::vector<Trace> trace_;
  locks::ClockSource clock_;
};

// Actors waiting for something, first come first served. wake_*() schedule the woken after a
// delay (e.g. a lock hand-off's cost); the woken leaves the queue at once.
class WaitQueue {
 public:
  explicit WaitQueue(Engine& e) : engine_(e) {}
  // Its waiters stay suspended (shutdown() unwinds them) but no longer refer to it.
  ~WaitQueue();
  WaitQueue(const WaitQueue&) = delete;
  WaitQueue& operator=(const WaitQueue&) = delete;

  // Suspends the current actor until a wake_*() picks it.
  void wait();
  // The i-th waiter (0: the longest waiting) resumes at now() + delay; returns it.
  Actor& wake(size_t i, Time delay = 0);
  Actor* wake_one(Time delay = 0) { return empty() ? nullptr : &wake(0, delay); }
  size_t wake_all(Time delay = 0);
  size_t size() const { return waiters_.size(); }
  bool empty() const { return waiters_.empty(); }

 private:
  Engine& engine_;
  std::deque<Actor*> waiters_;
};

}  // namespace kvmscale::sim
