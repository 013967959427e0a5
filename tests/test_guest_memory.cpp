#include <gtest/gtest.h>

#include <cstring>

#include "mm/guest_memory.hpp"

using kvmscale::mm::GuestMemory;

TEST(GuestMemory, TranslateChecksBoundsAndOverflow) {
  GuestMemory mem(1 << 20);
  EXPECT_EQ(mem.translate(0, 1 << 20), mem.host_base());
  EXPECT_EQ(mem.translate((1 << 20) - 1, 1), mem.host_base() + (1 << 20) - 1);
  EXPECT_EQ(mem.translate((1 << 20) - 1, 2), nullptr);
  EXPECT_EQ(mem.translate(1 << 20, 0), mem.host_base() + (1 << 20));  // empty range at the end
  EXPECT_EQ(mem.translate((1 << 20) + 1, 0), nullptr);
  EXPECT_EQ(mem.translate(~0ull, 2), nullptr);
  EXPECT_EQ(mem.translate(16, ~0ull - 8), nullptr);  // gpa + len wraps
  EXPECT_EQ(mem.translate(0, (1 << 20) + 1), nullptr);
}

TEST(GuestMemory, ReadCString) {
  GuestMemory mem(1 << 20);
  std::strcpy(reinterpret_cast<char*>(mem.host_base() + 100), "metric_a");
  char out[32];
  auto n = mem.read_cstring(100, out);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 8u);
  EXPECT_STREQ(out, "metric_a");
  // Unterminated within the limit.
  std::memset(mem.host_base() + 200, 'x', 64);
  EXPECT_FALSE(mem.read_cstring(200, out).has_value());
  // Runs off the end of guest memory.
  std::memset(mem.host_base() + (1 << 20) - 4, 'y', 4);
  EXPECT_FALSE(mem.read_cstring((1 << 20) - 4, out).has_value());
  EXPECT_FALSE(mem.read_cstring(~0ull, out).has_value());
}

TEST(GuestMemory, StartsZeroed) {
  GuestMemory mem(2 << 20);
  for (uint64_t off = 0; off < mem.size(); off += 4096) ASSERT_EQ(mem.host_base()[off], 0);
}
