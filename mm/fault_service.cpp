#include "mm/fault_service.hpp"

#include <liburing.h>
#include <linux/userfaultfd.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <system_error>

namespace kvmscale::mm {

namespace {
constexpr unsigned kReads = 1;        // fault reads in flight per thread: more only wake each other
constexpr uint64_t kStopTag = ~0ull;  // user_data of the eventfd read
constexpr uint64_t kCancelTag = 1ull << 32;  // user_data of the cancels at shutdown (+ index)
}  // namespace

FaultService::FaultService(Userfaultfd& uffd, int threads, Handler handler)
    : uffd_(uffd), handler_(std::move(handler)) {
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
  for (auto& ring : rings_) threads_.emplace_back([this, r = ring.get()] { loop(*r); });
}

FaultService::~FaultService() {
  uint64_t n = threads_.size();
  if (write(stop_fd_, &n, sizeof n) != sizeof n) std::terminate();
  for (auto& t : threads_) t.join();
  close(stop_fd_);
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
  for (unsigned i = 0; i < kReads; i++) arm(i);
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
    handler_(ev);
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
  for (unsigned i = 0; i < kReads; i++) {
    io_uring_sqe* c = io_uring_get_sqe(&ring);
    io_uring_prep_cancel64(c, i, 0);
    io_uring_sqe_set_data64(c, kCancelTag + i);
  }
  io_uring_submit(&ring);
  for (unsigned reads = kReads, cancels = kReads; reads + cancels > 0;) {
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
