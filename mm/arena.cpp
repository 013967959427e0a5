#include "mm/arena.hpp"

#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <system_error>
#include <utility>

#include "mm/thread_start.hpp"

namespace kvmscale::mm {

namespace {
constexpr uint64_t kCanary = 0x6b766d7363616c65ull;  // "kvmscale"

size_t round_to_pages(size_t n) {
  const size_t page = size_t(::sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}
}  // namespace

Arena::Arena(size_t slots, size_t slot_size, const char* what)
    : slots_(slots), slot_size_(round_to_pages(slot_size)) {
  if (slots_ == 0 || slot_size_ == 0) return;
  if (slot_size_ > SIZE_MAX / slots_)
    throw std::system_error(EOVERFLOW, std::generic_category(), std::string("mmap ") + what);
  void* p = ::mmap(nullptr, slots_ * slot_size_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw std::system_error(errno, std::generic_category(), std::string("mmap ") + what);
  base_ = static_cast<uint8_t*>(p);
}

Arena::~Arena() {
  if (base_) ::munmap(base_, slots_ * slot_size_);
}

void settle_malloc_mappings() {
  ::mallopt(M_ARENA_MAX, 1);
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
  ::mallopt(M_TOP_PAD, 16 << 20);
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum on 64-bit
}

StackThread::StackThread(StackThread&& o) noexcept
    : thread_(o.thread_),
      started_(std::exchange(o.started_, false)),
      canary_(o.canary_),
      fn_(std::move(o.fn_)) {}

StackThread& StackThread::operator=(StackThread&& o) noexcept {
  if (this != &o) {
    if (started_) join();
    thread_ = o.thread_;
    started_ = std::exchange(o.started_, false);
    canary_ = o.canary_;
    fn_ = std::move(o.fn_);
  }
  return *this;
}

StackThread::~StackThread() {
  if (started_) join();
}

void StackThread::join() {
  if (!started_) return;
  ::pthread_join(thread_, nullptr);
  started_ = false;
  fn_.reset();
  if (*canary_ != kCanary) {
    std::fprintf(stderr, "kvmscale: BUG: a thread overran its %zu-byte stack\n", kArenaStackSize);
    std::abort();
  }
}

StackThread StackThread::start(const Arena& stacks, size_t i, const std::string& what,
                               std::function<void()> fn) {
  count_thread_start(what);  // the test hook's simulated pids limit
  StackThread t;
  t.fn_ = std::make_unique<std::function<void()>>(std::move(fn));
  t.canary_ = reinterpret_cast<uint64_t*>(stacks.slot(i));  // stacks grow down to here
  *t.canary_ = kCanary;
  pthread_attr_t attr;
  ::pthread_attr_init(&attr);
  ::pthread_attr_setstack(&attr, stacks.slot(i), stacks.slot_size());
  int err = ::pthread_create(
      &t.thread_, &attr,
      [](void* f) -> void* {
        (*static_cast<std::function<void()>*>(f))();
        return nullptr;
      },
      t.fn_.get());
  ::pthread_attr_destroy(&attr);
  if (err != 0) throw ThreadStartError(thread_start_message(what, err));
  t.started_ = true;
  return t;
}

}  // namespace kvmscale::mm
