// A p2m whose epochs a test sets by hand (mm::P2mView; the real one is sched::P2m, tested in
// tests/test_p2m.cpp): for GuestView and hypercall tests that need no PoD behind it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>

#include "mm/p2m_view.hpp"

namespace kvmscale::test {

struct FakeP2m : mm::P2mView {
  std::map<uint64_t, uint32_t> by_page;  // page number -> epoch (absent: 0)
  uint32_t epoch(uint64_t gpa) const override {
    auto it = by_page.find(gpa / 4096);
    return it == by_page.end() ? 0 : it->second;
  }
  // Not used: these tests move the epochs themselves (no PoD policy runs).
  void fence(uint64_t) override {}
  void flush() override {}
  bool get_page(uint64_t, const std::function<void()>&) override { return true; }
  void put_page(uint64_t) override {}
};

}  // namespace kvmscale::test
