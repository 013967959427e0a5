#include "mm/fault_service.hpp"

#include <liburing.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

#include "mm/thread_start.hpp"

namespace kvmscale::mm {

namespace {
constexpr unsigned kReads = 1;        // fault reads in flight per thread: more only wake each other
constexpr uint64_t kStopTag = ~0ull;  // user_data of the eventfd read
constexpr uint64_t kCancelTag = 1ull << 32;  // user_data of the cancels at shutdown (+ index)
}  // namespace

FaultService::FaultService(Userfaultfd& uffd, int threads, Handler handler, bool read_faults)
    : uffd_(uffd), handler_(std::move(handler)), read_faults_(read_faults) {
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
  if (stop_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  for (int i = 0; i < threads; i++) {
    rings_.push_back(std::make_unique<io_uring>());
    int r = io_uring_queue_init(kReads * 4, rings_.back().get(), 0);
    // The uffd as a fixed file: requests name the file, never an fd number that a later
    // userfaultfd could reuse.
    if (r == 0) {
      const int fd = uffd_.fd();
      r = io_uring_register_files(rings_.back().get(), &fd, 1);
      if (r < 0) io_uring_queue_exit(rings_.back().get());
    }
    if (r < 0) {
      rings_.pop_back();
      for (auto& ring : rings_) io_uring_queue_exit(ring.get());
      close(stop_fd_);
      throw std::system_error(-r, std::generic_category(), "io_uring_queue_init");
    }
  }
  try {
    for (auto& ring : rings_)
      threads_.push_back(start_thread("fault service thread " +
                                          std::to_string(threads_.size() + 1) + " of " +
                                          std::to_string(threads),
                                      [this, r = ring.get()] { loop(*r); }));
  } catch (...) {
    // Unwind the partial start: the running threads exit their rings, the rest are ours.
    const size_t started = threads_.size();
    stop_threads();
    for (size_t i = started; i < rings_.size(); i++) io_uring_queue_exit(rings_[i].get());
    close(stop_fd_);
    throw;
  }
}

FaultService::~FaultService() {
  stop_threads();
  close(stop_fd_);
}

void FaultService::stop_threads() {
  uint64_t n = threads_.size();
  if (n && write(stop_fd_, &n, sizeof n) != sizeof n) std::terminate();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

bool FaultService::serving(uint64_t now_ns, uint64_t patience_ns) {
  // poll() reports faults not yet read (the uffd is O_NONBLOCK, as userfaultfd_poll requires).
  pollfd p{uffd_.fd(), POLLIN, 0};
  const bool unread = poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
  const uint64_t read = events_.load();
  if (!unread || handling_.load() > 0 || read != seen_events_) {
    seen_events_ = read;
    unread_since_ns_ = 0;
    return true;
  }
  if (!unread_since_ns_) unread_since_ns_ = now_ns;
  return now_ns - unread_since_ns_ < patience_ns;
}

void FaultService::loop(io_uring& ring) {
  uffd_msg msgs[kReads];
  uint64_t stop_value = 0;
  auto arm = [&](unsigned i) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_read(sqe, 0, &msgs[i], sizeof(uffd_msg), 0);  // fixed file 0: the uffd
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, i);
  };
  unsigned reads = 0;  // in flight
  if (read_faults_)
    for (; reads < kReads; reads++) arm(reads);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_read(sqe, stop_fd_, &stop_value, sizeof stop_value, 0);
  io_uring_sqe_set_data64(sqe, kStopTag);
  io_uring_submit(&ring);
  auto serve = [&](uint64_t tag, int res) {
    if (res != int(sizeof(uffd_msg)) || msgs[tag].event != UFFD_EVENT_PAGEFAULT) return;
    const auto& pf = msgs[tag].arg.pagefault;
    FaultEvent ev;
    ev.address = pf.address;
    ev.write = pf.flags & UFFD_PAGEFAULT_FLAG_WRITE;
    ev.write_protect = pf.flags & UFFD_PAGEFAULT_FLAG_WP;
    ev.tid = pf.feat.ptid;
    events_.fetch_add(1, std::memory_order_relaxed);
    handling_.fetch_add(1);
    handler_(ev);
    handling_.fetch_sub(1);
  };
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) continue;
    uint64_t tag = io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    if (tag == kStopTag) break;
    serve(tag, res);
    arm(unsigned(tag));
    io_uring_submit(&ring);
  }
  // Cancel the reads in flight and reap every one before the ring (and `msgs`) goes away: a
  // read that completes meanwhile carries a fault whose thread would otherwise wait forever.
  for (unsigned i = 0; i < reads; i++) {
    io_uring_sqe* c = io_uring_get_sqe(&ring);
    io_uring_prep_cancel64(c, i, 0);
    io_uring_sqe_set_data64(c, kCancelTag + i);
  }
  io_uring_submit(&ring);
  for (unsigned cancels = reads; reads + cancels > 0;) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) continue;
    uint64_t tag = io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    if (tag >= kCancelTag) {
      cancels--;
    } else {
      reads--;
      serve(tag, res);
    }
  }
  io_uring_queue_exit(&ring);
}

}  // namespace kvmscale::mm
