#include "vmm/regular_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kvmscale::vmm {

namespace {

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a file";
}

std::string not_regular(mode_t m) { return std::string("not a regular file (") + kind_of(m) + ")"; }

}  // namespace

RegularFile::RegularFile(const std::string& path) : path_(path) {
  // stat first: a device is refused without being opened (opening one can have effects).
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw FileError(path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw FileError(path, not_regular(st.st_mode));
  // O_NONBLOCK: should a FIFO replace the file after the stat, opening it does not wait for a
  // writer; fstat then refuses it.
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw FileError(path, std::strerror(errno));
  const int err = ::fstat(fd_, &st) != 0 ? errno : 0;
  if (err || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw FileError(path, err ? std::strerror(err) : not_regular(st.st_mode));
  }
  size_ = uint64_t(st.st_size);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::string RegularFile::read_all(uint64_t max_bytes) {
  std::string data;
  data.reserve(size_t(std::min(size_, max_bytes)));
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw FileError(path_, std::strerror(errno));
    if (n == 0) return data;
    if (data.size() + size_t(n) > max_bytes)
      throw FileError(path_, "larger than " + std::to_string(max_bytes) + " bytes");
    data.append(buf, size_t(n));
  }
}

std::string read_regular_file(const std::string& path, uint64_t max_bytes) {
  return RegularFile(path).read_all(max_bytes);
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 || (errno != ENOENT && errno != ENOTDIR);
}

}  // namespace kvmscale::vmm
