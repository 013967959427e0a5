#include "app/record.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <sstream>
#include <system_error>

#include "version.h"  // generated: KVMSCALE_VERSION
#include "vmm/clock.hpp"

namespace kvmscale::app {

using namespace kvmscale::vmm;  // the KVM machine below

std::string version_string() { return KVMSCALE_VERSION; }

nlohmann::json tool_json() {
  return {{"name", "kvmscale"},
          {"version", version_string()},
          {"build_type", KVMSCALE_BUILD_TYPE},
          {"sanitize", KVMSCALE_SANITIZE_FLAGS},
          {"probes", KVMSCALE_PROBES != 0},
          {"command_line", command_line()}};
}

const char* end_reason_name(EndReason r) {
  switch (r) {
    case EndReason::AllExited: return "all_exited";
    case EndReason::Duration: return "duration";
    case EndReason::Interrupted: return "interrupted";
    default: return "error";
  }
}

namespace {

const char* state_name(VmState s) {
  switch (s) {
    case VmState::Exited: return "exited";
    case VmState::Crashed: return "crashed";
    default: return "running";
  }
}

nlohmann::json vcpu_record(const Vcpu& v, uint64_t exec_start_ns) {
  const VcpuStats& s = v.stats;
  nlohmann::json exits = nlohmann::json::object(), hcalls = nlohmann::json::object(),
                 metrics = nlohmann::json::object();
  for (int r = 0; r < kExitReasonSlots; r++)
    if (s.exits[r])
      exits[exit_reason_name(r)] = exits.value(exit_reason_name(r), 0ull) + s.exits[r];
  for (uint64_t op = 0; op <= KS_HC_OP_COUNT; op++)
    if (s.hcalls[op]) hcalls[hcall_name(op)] = s.hcalls[op];
  for (unsigned i = 0; i < KS_METRIC_SLOTS; i++)
    if (!s.metric_names[i].empty()) metrics[s.metric_names[i]] = v.metric(i);
  nlohmann::json j = {
      {"index", v.index()},       {"exited", v.exited},   {"exit_code", v.exit_code},
      {"runs", s.runs},           {"run_ns", s.run_ns},   {"kicks", s.kicks},
      {"exits", exits},           {"hypercalls", hcalls}, {"hypercall_errors", s.hcall_errors},
      {"progress", v.progress()}, {"metrics", metrics}};
  j["boot_ns"] = s.boot_done_ns ? nlohmann::json(s.boot_done_ns - exec_start_ns) : nlohmann::json();
  return j;
}

template <typename T>
T percentile(std::vector<T> v, double p) {
  if (v.empty()) return T{};
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

namespace {
std::string base64(const std::string& in) {
  static const char* const kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t n = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) n |= uint32_t(uint8_t(in[i + 1])) << 8;
    if (i + 2 < in.size()) n |= uint8_t(in[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < in.size() ? kAlphabet[n & 63] : '=';
  }
  return out;
}
}  // namespace

nlohmann::json console_fields(const std::string& bytes) {
  using nlohmann::json;
  // nlohmann-json validates UTF-8 when it serialises; its "replace" handler gives the lossy text.
  std::string quoted = json(bytes).dump(-1, ' ', false, json::error_handler_t::replace);
  std::string text = json::parse(quoted).get<std::string>();
  return {{"console", text}, {"console_base64", text == bytes ? json() : json(base64(bytes))}};
}

nlohmann::json vm_record(const Vm& vm, const std::string& guest, uint64_t exec_start_ns) {
  nlohmann::json vcpus = nlohmann::json::array(), metrics = nlohmann::json::object();
  uint64_t boot_done = 0;
  bool all_booted = true;
  for (uint32_t i = 0; i < vm.nr_vcpus(); i++) {
    const Vcpu& v = vm.vcpu(i);
    vcpus.push_back(vcpu_record(v, exec_start_ns));
    for (auto& [name, value] : vcpus.back()["metrics"].items())
      metrics[name] = metrics.value(name, 0ull) + value.get<uint64_t>();
    if (v.stats.boot_done_ns == 0) all_booted = false;
    boot_done = std::max(boot_done, v.stats.boot_done_ns);
  }
  nlohmann::json j = {{"index", vm.index()},
                      {"guest", guest},
                      {"state", state_name(vm.state())},
                      {"exit_code", vm.exit_code()},
                      {"create_ns", vm.create_ns()},
                      {"metrics", metrics},
                      {"console_dropped", vm.console().dropped()},
                      {"vcpus", vcpus}};
  j.update(console_fields(vm.console().text()));
  // A VM has booted when its last vCPU reported boot done.
  j["boot_ns"] = all_booted ? nlohmann::json(boot_done - exec_start_ns) : nlohmann::json();
  j["crash_reason"] =
      vm.state() == VmState::Crashed ? nlohmann::json(vm.crash_reason()) : nlohmann::json();
  return j;
}

nlohmann::json make_run_record(const RunConfig& cfg, const HostInfo& host,
                               const std::vector<const Vm*>& vms, const RunTiming& t, EndReason end,
                               const std::vector<std::string>& warnings) {
  nlohmann::json vm_list = nlohmann::json::array();
  std::vector<uint64_t> boots;
  uint64_t crashed = 0, exits = 0, create_total = 0;
  for (const Vm* vm : vms) {
    vm_list.push_back(vm_record(*vm, cfg.guest_for_vm(vm->index()), t.exec_start_ns));
    const auto& r = vm_list.back();
    if (!r["boot_ns"].is_null()) boots.push_back(r["boot_ns"].get<uint64_t>());
    if (vm->state() == VmState::Crashed) crashed++;
    create_total += vm->create_ns();
    for (const auto& v : r["vcpus"])
      for (const auto& [k, n] : v["exits"].items()) exits += n.get<uint64_t>();
  }
  nlohmann::json summary = {{"vms", vms.size()},
                            {"vms_booted", boots.size()},
                            {"vms_crashed", crashed},
                            {"exits_total", exits},
                            {"create_ns_total", create_total},
                            {"create_wall_ns", t.exec_start_ns - t.create_start_ns}};
  if (!boots.empty()) {
    summary["boot_ns"] = {{"min", percentile(boots, 0.0)},
                          {"p50", percentile(boots, 0.5)},
                          {"p90", percentile(boots, 0.9)},
                          {"max", percentile(boots, 1.0)}};
  }
  return {{"schema_version", kRecordSchemaVersion},
          {"tool", tool_json()},
          {"config", cfg.to_json()},
          {"host", host.to_json()},
          {"run",
           {{"started_unix_ns", t.started_unix_ns},
            {"wall_ns", t.end_ns - t.create_start_ns},
            {"exec_ns", t.end_ns > t.exec_start_ns ? t.end_ns - t.exec_start_ns : 0},
            {"end_reason", end_reason_name(end)},
            {"interrupted", end == EndReason::Interrupted},
            {"warnings", warnings}}},
          {"summary", summary},
          {"vms", vm_list}};
}

void write_file_atomically(const std::string& path, const std::string& content, bool replace) {
  namespace fs = std::filesystem;
  fs::path p(path);
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::string tmp_name = ".";  // built by appends: GCC 12 misfires -Wrestrict on "lit" + str
  tmp_name += p.filename().string();
  tmp_name += ".tmp.";
  tmp_name += std::to_string(getpid());
  std::string tmp = (dir / tmp_name).string();
  auto fail = [&](const char* what) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw std::system_error(e, std::generic_category(), std::string(what) + " " + path);
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "create " + tmp);
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      fail("write");
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    fail("fsync");
  }
  ::close(fd);
  if (replace) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename to");
  } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno != EINVAL && errno != ENOSYS) fail("rename (keeping an existing file) to");
    // A file system without RENAME_NOREPLACE: link() refuses an existing name just the same.
    if (::link(tmp.c_str(), path.c_str()) != 0) fail("link (keeping an existing file) to");
    ::unlink(tmp.c_str());
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::string output_dir_unusable(const std::string& dir) {
  const std::string probe = dir + "/.kvmscale-probe-" + std::to_string(getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return "cannot create files in " + dir + ": " + std::strerror(errno);
  char block[4096] = {};
  bool wrote = ::write(fd, block, sizeof block) == ssize_t(sizeof block) && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  ::unlink(probe.c_str());
  if (!wrote) return "cannot write to " + dir + ": " + std::strerror(err);
  struct statvfs vfs {};
  if (statvfs(dir.c_str(), &vfs) == 0 && uint64_t(vfs.f_bavail) * vfs.f_frsize < (1u << 20))
    return dir + " has less than 1 MiB free";
  return {};
}

std::string record_path(const std::string& out, uint64_t started_unix_ns) {
  if (out.size() > 5 && out.substr(out.size() - 5) == ".json") return out;
  time_t secs = static_cast<time_t>(started_unix_ns / 1000000000ull);
  tm tmv{};
  gmtime_r(&secs, &tmv);
  char name[64];
  std::snprintf(name, sizeof name, "run-%04d%02d%02d-%02d%02d%02d-%d.json", tmv.tm_year + 1900,
                tmv.tm_mon + 1, tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec, getpid());
  return (std::filesystem::path(out) / name).string();
}

std::string summary_table(const nlohmann::json& r) {
  std::ostringstream o;
  const auto& s = r["summary"];
  const auto& run = r["run"];
  char line[256];
  o << "kvmscale " << r["tool"]["version"].get<std::string>() << " on "
    << r["host"]["backend"].get<std::string>() << ", " << r["host"]["online_cpus"]
    << " host CPUs\n";
  std::snprintf(line, sizeof line, "run ended: %s after %s (VM creation %s)\n",
                run["end_reason"].get<std::string>().c_str(),
                format_duration(run["wall_ns"].get<uint64_t>()).c_str(),
                format_duration(s["create_wall_ns"].get<uint64_t>()).c_str());
  o << line;
  std::snprintf(line, sizeof line, "%-5s %-10s %-8s %5s %12s %10s  %s\n", "vm", "guest", "state",
                "code", "boot", "exits", "metrics / crash reason");
  o << line;
  const auto& vms = r["vms"];
  size_t shown = 0;
  for (const auto& vm : vms) {
    if (++shown > 16) {
      o << "  ... " << vms.size() - 16 << " more VMs in the record\n";
      break;
    }
    uint64_t exits = 0;
    for (const auto& v : vm["vcpus"])
      for (const auto& [k, n] : v["exits"].items()) exits += n.get<uint64_t>();
    std::string extra;
    if (!vm["crash_reason"].is_null())
      extra = vm["crash_reason"].get<std::string>();
    else
      for (const auto& [k, v] : vm["metrics"].items()) extra += k + "=" + v.dump() + " ";
    std::string boot =
        vm["boot_ns"].is_null() ? "-" : format_duration(vm["boot_ns"].get<uint64_t>());
    std::snprintf(line, sizeof line, "%-5d %-10s %-8s %5lld %12s %10llu  %s\n",
                  vm["index"].get<int>(), vm["guest"].get<std::string>().c_str(),
                  vm["state"].get<std::string>().c_str(),
                  static_cast<long long>(vm["exit_code"].get<int64_t>()), boot.c_str(),
                  static_cast<unsigned long long>(exits), extra.c_str());
    o << line;
  }
  o << "VMs: " << s["vms"] << ", booted " << s["vms_booted"] << ", crashed " << s["vms_crashed"];
  if (s.contains("boot_ns"))
    o << "; boot time min " << format_duration(s["boot_ns"]["min"]) << " median "
      << format_duration(s["boot_ns"]["p50"]) << " p90 " << format_duration(s["boot_ns"]["p90"])
      << " max " << format_duration(s["boot_ns"]["max"]);
  o << "\n";
  if (r.contains("procs"))
    o << "VMM processes: " << r["procs"].size() << " (" << run["procs"]["rule"].get<std::string>()
      << ")\n";
  for (const auto& w : run["warnings"]) o << "warning: " << w.get<std::string>() << "\n";
  return o.str();
}

}  // namespace kvmscale::app
