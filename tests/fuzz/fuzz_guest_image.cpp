// libFuzzer target: a --guest-file image, read as `run` reads it (regular file, 1 B..1 MiB) and
// laid out in guest memory with the boot area as a VM's creation does, before any KVM call.
#include <cstdint>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "mm/guest_memory.hpp"
#include "tests/fuzz/fuzz_file.hpp"
#include "vmm/boot.hpp"
#include "vmm/guest_images.hpp"

using namespace kvmscale;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static mm::GuestMemory mem(vmm::kMinGuestMem);
  const std::string path = fuzz::write_temp_file(data, size, "guest.bin");
  std::vector<uint8_t> image;
  try {
    image = vmm::load_guest_file(path);
  } catch (const vmm::GuestImageError&) {
    return 0;
  }
  const uint64_t args[3] = {size, size > 0 ? data[0] : 0u, ~0ull};
  vmm::BootParams bp;
  bp.vm_index = size > 1 ? data[1] : 0;
  bp.nr_vcpus = size > 2 ? 1 + data[2] % 64 : 1;
  bp.image = image;
  bp.guest_args = args;
  vmm::write_boot_area(mem, bp);  // any image of an accepted size must fit
  return 0;
}
