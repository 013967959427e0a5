// Fuzz targets whose parser reads a file: the input written to a per-process temp file.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace kvmscale::fuzz {

// DIR/NAME in a per-process directory under $TMPDIR (or /tmp), rewritten on every call.
inline std::string write_temp_file(const uint8_t* data, size_t size, const std::string& name) {
  static const std::string dir = [] {
    const char* t = std::getenv("TMPDIR");
    std::string d =
        std::string(t && *t ? t : "/tmp") + "/kvmscale-fuzz-" + std::to_string(getpid());
    ::mkdir(d.c_str(), 0700);
    return d;
  }();
  const std::string path = dir + "/" + name;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  for (size_t done = 0; done < size;) {
    ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += size_t(n);
  }
  ::close(fd);
  return path;
}

}  // namespace kvmscale::fuzz
