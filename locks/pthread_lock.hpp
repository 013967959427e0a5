// pthread mutex (glibc: a futex; waiters sleep in the kernel). The baseline for "just use a mutex".
#pragma once

#include <pthread.h>

#include "locks/common.hpp"

namespace kvmscale::locks {

class PthreadLock {
 public:
  using Node = NoNode;
  PthreadLock() { pthread_mutex_init(&m_, nullptr); }
  ~PthreadLock() { pthread_mutex_destroy(&m_); }
  PthreadLock(const PthreadLock&) = delete;
  PthreadLock& operator=(const PthreadLock&) = delete;
  void lock(Node&) { pthread_mutex_lock(&m_); }
  // Polling cannot happen inside the kernel: a polling waiter try-locks instead of sleeping.
  template <typename Poll>
  void lock(Node& n, Poll&& poll) {
    if constexpr (!kPolls<Poll>) {
      lock(n);
    } else {
      while (pthread_mutex_trylock(&m_) != 0) {
        poll();
        cpu_relax();
      }
    }
  }
  bool try_lock(Node&) { return pthread_mutex_trylock(&m_) == 0; }
  void unlock(Node&) { pthread_mutex_unlock(&m_); }

 private:
  pthread_mutex_t m_;
};

}  // namespace kvmscale::locks
