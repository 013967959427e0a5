// Reading a file a user or a record names: regular files only. A FIFO, a device, a socket or a
// directory standing where a file is expected is refused at once (a FIFO is never waited on).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kvmscale::vmm {

// what(): "PATH: why"; why(): the reason alone (e.g. "not a regular file (a FIFO)").
class FileError : public std::runtime_error {
 public:
  FileError(const std::string& path, const std::string& why)
      : std::runtime_error(path + ": " + why), why_(why) {}
  const std::string& why() const { return why_; }

 private:
  std::string why_;
};

// An open regular file (symlinks followed). Throws FileError: missing, unreadable, not regular.
class RegularFile {
 public:
  explicit RegularFile(const std::string& path);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  uint64_t size() const { return size_; }  // when opened
  // Everything up to end of file; throws FileError past `max_bytes` or on a read error.
  std::string read_all(uint64_t max_bytes);

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The limit for a record or a study file (records of 10,000 VMs are tens of MiB).
inline constexpr uint64_t kMaxReadBytes = 1ull << 30;

// RegularFile(path).read_all(max_bytes).
std::string read_regular_file(const std::string& path, uint64_t max_bytes = kMaxReadBytes);

// Whether something stands at `path` (a dangling symlink counts): false only for ENOENT/ENOTDIR.
bool path_exists(const std::string& path);

}  // namespace kvmscale::vmm
