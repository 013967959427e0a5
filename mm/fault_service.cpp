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
constexpr unsigned kReads = 8;        // fault reads in flight per thread
constexpr uint64_t kStopTag = ~0ull;  // user_data of the eventfd read
}  // namespace

FaultService::FaultService(Userfaultfd& uffd, int threads, Handler handler)
    : uffd_(uffd), handler_(std::move(handler)) {
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_SEMAPHORE);
  if (stop_fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  for (int i = 0; i < threads; i++) {
    rings_.push_back(std::make_unique<io_uring>());
    if (int r = io_uring_queue_init(kReads * 2, rings_.back().get(), 0); r < 0) {
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
    io_uring_prep_read(sqe, uffd_.fd(), &msgs[i], sizeof(uffd_msg), 0);
    io_uring_sqe_set_data64(sqe, i);
  };
  for (unsigned i = 0; i < kReads; i++) arm(i);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_read(sqe, stop_fd_, &stop_value, sizeof stop_value, 0);
  io_uring_sqe_set_data64(sqe, kStopTag);
  io_uring_submit(&ring);
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) continue;
    uint64_t tag = io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    if (tag == kStopTag) break;
    if (res == int(sizeof(uffd_msg)) && msgs[tag].event == UFFD_EVENT_PAGEFAULT) {
      const auto& pf = msgs[tag].arg.pagefault;
      FaultEvent ev;
      ev.address = pf.address;
      ev.write = pf.flags & UFFD_PAGEFAULT_FLAG_WRITE;
      ev.write_protect = pf.flags & UFFD_PAGEFAULT_FLAG_WP;
      ev.tid = pf.feat.ptid;
      events_.fetch_add(1, std::memory_order_relaxed);
      handler_(ev);
    }
    arm(unsigned(tag));
    io_uring_submit(&ring);
  }
  io_uring_queue_exit(&ring);
}

}  // namespace kvmscale::mm
