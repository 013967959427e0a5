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
  // Starts `threads` threads; the handler runs on them, concurrently when threads > 1.
  FaultService(Userfaultfd& uffd, int threads, Handler handler);
  ~FaultService();  // stops and joins
  FaultService(const FaultService&) = delete;
  FaultService& operator=(const FaultService&) = delete;
  uint64_t events() const { return events_.load(); }

 private:
  void loop(io_uring& ring);
  Userfaultfd& uffd_;
  Handler handler_;
  int stop_fd_ = -1;  // eventfd: one count per thread ends it
  std::atomic<uint64_t> events_{0};
  std::vector<std::unique_ptr<io_uring>> rings_;
  std::vector<std::thread> threads_;
};

}  // namespace kvmscale::mm
