// Guest images: the built-in ones are embedded in the binary at build time (Makefile.guests ->
// .incbin), so kvmscale runs from anywhere; --guest-file loads a custom flat image instead.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvmscale::vmm {

// Empty span if `name` is not a built-in guest.
std::span<const uint8_t> builtin_guest_image(const std::string& name);
std::vector<std::string> embedded_guest_names();
// A --guest-file that cannot be a guest image (the application reports it as bad usage).
struct GuestImageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Reads a flat image; throws GuestImageError if unreadable, empty, over 1 MiB or not a regular
// file.
std::vector<uint8_t> load_guest_file(const std::string& path);

}  // namespace kvmscale::vmm
