// Serves the userfaultfd of every VM from a small pool of threads, each reading fault events
// through its own io_uring (liburing) rather than a thread per VM.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "mm/userfaultfd.hpp"

namespace kvmscale::mm {

struct FaultEvent {
  uint64_t address = 0;
  bool write = false;
  bool write_protect = false;  // a write to a fenced (write-protected) page
  uint32_t tid = 0;            // the faulting thread
};

class FaultService {
 public:
  using Handler = std::function<void(const FaultEvent&)>;
  // Starts `threads` threads; the handler runs on them, concurrently when threads > 1. Throws
  // (mm::ThreadStartError, std::system_error) with none left running if one cannot start.
  // `read_faults` false is a test hook: the threads never read a fault, as when the kernel
  // cannot start io_uring's worker for the reads (a pids limit).
  FaultService(Userfaultfd& uffd, int threads, Handler handler, bool read_faults = true);
  ~FaultService();  // stops and joins
  FaultService(const FaultService&) = delete;
  FaultService& operator=(const FaultService&) = delete;
  uint64_t events() const { return events_.load(); }
  // Liveness, called periodically from one thread: false once a fault has waited unread for
  // `patience_ns` while no thread was handling one. A read the kernel must hand to an io_uring
  // worker it cannot start (a pids limit) never completes: no error, the vCPUs just wait.
  bool serving(uint64_t now_ns, uint64_t patience_ns);

 private:
  void loop(io_uring& ring);
  void stop_threads();  // ends and joins the running threads
  Userfaultfd& uffd_;
  Handler handler_;
  int stop_fd_ = -1;  // eventfd: one count per thread ends it
  const bool read_faults_;
  std::atomic<uint64_t> events_{0};
  std::atomic<uint32_t> handling_{0};               // threads inside the handler
  uint64_t seen_events_ = 0, unread_since_ns_ = 0;  // serving()'s state
  std::vector<std::unique_ptr<io_uring>> rings_;
  std::vector<std::thread> threads_;
};

}  // namespace kvmscale::mm
