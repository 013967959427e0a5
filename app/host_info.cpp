#include "app/host_info.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <numa.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "app/config.hpp"
#include "vmm/kvm.hpp"

namespace kvmscale::app {

using namespace kvmscale::vmm;  // the KVM machine below
namespace {

uint64_t read_number(const char* path) {
  std::ifstream f(path);
  uint64_t v = 0;
  f >> v;
  return v;
}

uint64_t meminfo_kib(const std::string& key) {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1));
  return 0;
}

namespace fs = std::filesystem;

// Text a record can hold: nlohmann-json refuses to serialise invalid UTF-8.
std::string printable(const std::string& s) {
  using nlohmann::json;
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace))
      .get<std::string>();
}

// A small sysfs/procfs file, trailing whitespace dropped; nullopt if it cannot be read.
std::optional<std::string> read_small_file(const fs::path& p) {
  std::ifstream f(p);
  if (!f) return std::nullopt;
  std::string s;
  s.resize(4096);
  f.read(s.data(), std::streamsize(s.size()));
  if (f.bad()) return std::nullopt;
  s.resize(size_t(f.gcount()));
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return printable(s);
}

// "key\t: value" lines of /proc/cpuinfo: the first CPU's value of `key`, or "".
std::string cpuinfo_field(const fs::path& cpuinfo, const std::string& key) {
  std::ifstream f(cpuinfo);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) != 0) continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    if (name != key) continue;
    size_t v = line.find_first_not_of(" \t", colon + 1);
    return printable(v == std::string::npos ? "" : line.substr(v));
  }
  return "";
}

// Directory entries whose name is `prefix` then a number, sorted by that number.
std::vector<std::pair<int, fs::path>> numbered_dirs(const fs::path& dir,
                                                    const std::string& prefix) {
  std::vector<std::pair<int, fs::path>> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.rfind(prefix, 0) != 0) continue;
    const std::string num = name.substr(prefix.size());
    if (num.size() > 6 || !std::all_of(num.begin(), num.end(), ::isdigit)) continue;
    out.emplace_back(std::stoi(num), it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

uint64_t node_mem_total(const fs::path& meminfo) {
  // "Node 0 MemTotal:       16318284 kB"
  std::ifstream f(meminfo);
  std::string line;
  while (std::getline(f, line)) {
    size_t k = line.find("MemTotal:");
    if (k == std::string::npos) continue;
    std::istringstream in(line.substr(k + 9));
    uint64_t kib = 0;
    if (in >> kib) return kib << 10;
  }
  return 0;
}

int64_t probe_uffd_features() {
  int fd = int(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return -1;
  uffdio_api api{};
  api.api = UFFD_API;
  int64_t features = ioctl(fd, UFFDIO_API, &api) == 0 ? int64_t(api.features) : -1;
  close(fd);
  return features;
}

}  // namespace

int cpulist_count(const std::string& list) {
  int n = 0;
  size_t i = 0;
  auto number = [&](uint64_t& v) {
    const size_t start = i;
    v = 0;
    while (i < list.size() && std::isdigit(static_cast<unsigned char>(list[i])) && i - start < 9)
      v = v * 10 + uint64_t(list[i++] - '0');
    return i > start && (i == list.size() || !std::isdigit(static_cast<unsigned char>(list[i])));
  };
  while (i < list.size()) {
    uint64_t lo = 0, hi = 0;
    if (!number(lo)) return -1;
    hi = lo;
    if (i < list.size() && list[i] == '-' && (++i, !number(hi) || hi < lo)) return -1;
    n += int(hi - lo + 1);
    if (n > 1 << 24) return -1;
    if (i < list.size() && (list[i++] != ',' || i == list.size())) return -1;
  }
  return n;
}

void read_host_files(HostInfo& h, const std::string& root) {
  const fs::path r(root);
  h.cpu_model = cpuinfo_field(r / "proc/cpuinfo", "model name");
  if (h.cpu_model.empty()) h.cpu_model = "unknown";
  h.microcode = cpuinfo_field(r / "proc/cpuinfo", "microcode");
  const fs::path cpu = r / "sys/devices/system/cpu";
  h.smt_active = -1;
  if (auto a = read_small_file(cpu / "smt/active"); a && (*a == "0" || *a == "1"))
    h.smt_active = *a == "1";
  h.smt_control = read_small_file(cpu / "smt/control").value_or("");
  h.threads_per_core = 0;
  for (const auto& [n, dir] : numbered_dirs(cpu, "cpu"))
    if (auto s = read_small_file(dir / "topology/thread_siblings_list"))
      h.threads_per_core = std::max(h.threads_per_core, cpulist_count(*s));
  h.numa.clear();
  for (const auto& [n, dir] : numbered_dirs(r / "sys/devices/system/node", "node"))
    h.numa.push_back(
        {n, read_small_file(dir / "cpulist").value_or(""), node_mem_total(dir / "meminfo")});
  h.kvm_params.clear();
  std::error_code ec;
  for (fs::directory_iterator it(r / "sys/module", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string module = it->path().filename().string();
    if (module.rfind("kvm", 0) != 0) continue;
    std::error_code pec;
    for (fs::directory_iterator p(it->path() / "parameters", pec), pend; !pec && p != pend;
         p.increment(pec))
      if (auto v = read_small_file(p->path()))  // some parameters are write-only
        h.kvm_params[module][p->path().filename().string()] = *v;
  }
}

std::vector<std::string> command_line(const std::string& root) {
  std::ifstream f(fs::path(root) / "proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos) end = all.size();
    args.push_back(printable(all.substr(start, end - start)));
    start = end + 1;
  }
  return args;
}

HostInfo probe_host(const KvmSystem* kvm) {
  HostInfo h;
  utsname u{};
  if (uname(&u) == 0) {
    h.hostname = u.nodename;
    h.kernel = std::string(u.sysname) + " " + u.release + " " + u.machine;
  }
  read_host_files(h, "/");
  h.online_cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  h.numa_nodes = numa_available() >= 0 ? numa_num_configured_nodes() : 1;
  h.mem_total = meminfo_kib("MemTotal") << 10;
  h.mem_available = meminfo_kib("MemAvailable") << 10;
  h.backend = detect_backend();
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    h.nofile_soft = rl.rlim_cur;
    h.nofile_hard = rl.rlim_max;
  }
  if (getrlimit(RLIMIT_NPROC, &rl) == 0) h.nproc_soft = rl.rlim_cur;
  h.threads_max = read_number("/proc/sys/kernel/threads-max");
  h.pid_max = read_number("/proc/sys/kernel/pid_max");
  h.max_map_count = read_number("/proc/sys/vm/max_map_count");
  h.uffd_features = probe_uffd_features();
  if (kvm != nullptr) {
    h.kvm_available = true;
    h.kvm_api_version = kvm->api_version();
    const std::pair<const char*, long> caps[] = {
        {"user_memory", KVM_CAP_USER_MEMORY},   {"immediate_exit", KVM_CAP_IMMEDIATE_EXIT},
        {"ext_cpuid", KVM_CAP_EXT_CPUID},       {"nr_vcpus", KVM_CAP_NR_VCPUS},
        {"max_vcpus", KVM_CAP_MAX_VCPUS},       {"nr_memslots", KVM_CAP_NR_MEMSLOTS},
        {"irqchip", KVM_CAP_IRQCHIP},           {"sync_mmu", KVM_CAP_SYNC_MMU},
        {"set_tss_addr", KVM_CAP_SET_TSS_ADDR}, {"get_msr_features", KVM_CAP_GET_MSR_FEATURES}};
    for (auto [name, cap] : caps) h.kvm_caps[name] = kvm->check_extension(cap);
  }
  return h;
}

nlohmann::json HostInfo::to_json() const {
  nlohmann::json numa_json = nlohmann::json::array();
  for (const NumaNode& n : numa)
    numa_json.push_back({{"node", n.node}, {"cpus", n.cpus}, {"mem_total", n.mem_total}});
  return {
      {"hostname", hostname},
      {"kernel", kernel},
      {"cpu_model", cpu_model},
      {"microcode", microcode.empty() ? nlohmann::json() : nlohmann::json(microcode)},
      {"smt",
       {{"active", smt_active < 0 ? nlohmann::json() : nlohmann::json(smt_active == 1)},
        {"control", smt_control.empty() ? nlohmann::json() : nlohmann::json(smt_control)},
        {"threads_per_core",
         threads_per_core ? nlohmann::json(threads_per_core) : nlohmann::json()}}},
      {"numa", numa_json},
      {"kvm_params", kvm_params},
      {"online_cpus", online_cpus},
      {"numa_nodes", numa_nodes},
      {"mem_total", mem_total},
      {"mem_available", mem_available},
      {"kvm_available", kvm_available},
      {"backend", backend_name(backend)},
      {"kvm_api_version", kvm_api_version},
      {"kvm_caps", kvm_caps},
      {"limits",
       {{"nofile_soft", nofile_soft},
        {"nofile_hard", nofile_hard},
        {"nproc_soft", nproc_soft},
        {"threads_max", threads_max},
        {"pid_max", pid_max},
        {"max_map_count", max_map_count}}},
      {"userfaultfd",
       {{"available", uffd_features >= 0},
        {"features", uffd_features},
        {"write_protect", uffd_features >= 0 && (uffd_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)},
        {"thread_id", uffd_features >= 0 && (uffd_features & UFFD_FEATURE_THREAD_ID)}}}};
}

ResourceSample sample_resources() {
  ResourceSample r;
  r.mem_available = meminfo_kib("MemAvailable") << 10;
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    auto ns = [](const timeval& tv) {
      return uint64_t(tv.tv_sec) * 1000000000ull + uint64_t(tv.tv_usec) * 1000ull;
    };
    r.cpu_user_ns = ns(ru.ru_utime);
    r.cpu_sys_ns = ns(ru.ru_stime);
    r.peak_rss = uint64_t(ru.ru_maxrss) << 10;
  }
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("Threads:", 0) == 0) r.threads = std::strtoull(line.c_str() + 8, nullptr, 10);
  return r;
}

}  // namespace kvmscale::app
