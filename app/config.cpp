#include "app/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>

#include "app/settings.hpp"
#include "guests/include/kvmscale_abi.h"
#include "locks/registry.hpp"
#include "vmm/boot.hpp"

namespace kvmscale::app {
namespace {

// Splits "12.5ms" into 12.5 and "ms"; rejects anything else.
std::pair<double, std::string> number_and_unit(const std::string& text, const char* what) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    i++;
  std::string num = text.substr(0, i), unit = text.substr(i);
  // At least one digit ("." alone made std::stod throw invalid_argument: exit 1 "stod"), and in
  // range (hundreds of digits made it throw out_of_range); both found by fuzz_run_flags.
  const bool digit = std::any_of(num.begin(), num.end(), [](char c) { return c != '.'; });
  errno = 0;
  const double v = digit ? std::strtod(num.c_str(), nullptr) : 0;
  if (!digit || std::count(num.begin(), num.end(), '.') > 1 || errno == ERANGE || !std::isfinite(v))
    throw ConfigError(std::string("invalid ") + what + " '" + text + "'");
  std::transform(unit.begin(), unit.end(), unit.begin(), ::tolower);
  return {v, unit};
}

}  // namespace

uint64_t parse_size(const std::string& text) {
  auto [v, unit] = number_and_unit(text, "size");
  double mult;
  if (unit.empty() || unit == "b")
    mult = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib")
    mult = 1ull << 10;
  else if (unit == "m" || unit == "mb" || unit == "mib")
    mult = 1ull << 20;
  else if (unit == "g" || unit == "gb" || unit == "gib")
    mult = 1ull << 30;
  else if (unit == "t" || unit == "tb" || unit == "tib")
    mult = 1ull << 40;
  else
    throw ConfigError("invalid size unit in '" + text + "' (use K, M, G or T)");
  double bytes = v * mult;
  if (bytes >= 1.8e19 || bytes != std::floor(bytes))
    throw ConfigError("size '" + text + "' is not a whole number of bytes in range");
  return static_cast<uint64_t>(bytes);
}

std::string decimal_count_error(const std::string& text) {
  const bool digits =
      !text.empty() && text.size() <= 10 &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits && (text.size() == 1 || text[0] != '0')) return {};
  return "'" + text +
         "' is not a decimal count (counts are plain decimal: no sign, 0x or leading 0)";
}

uint64_t parse_u64(const std::string& text) {
  const bool hex = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  const char* first = text.data() + (hex ? 2 : 0);
  const char* last = text.data() + text.size();
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(first, last, v, hex ? 16 : 10);
  if (first == last || ec != std::errc() || end != last)
    throw ConfigError("'" + text + "' is not a whole number in 0..2^64-1 (decimal or 0x hex)");
  return v;
}

uint64_t parse_duration_ns(const std::string& text) {
  auto [v, unit] = number_and_unit(text, "duration");
  double mult;
  if (unit.empty() || unit == "s")
    mult = 1e9;
  else if (unit == "ms")
    mult = 1e6;
  else if (unit == "us")
    mult = 1e3;
  else if (unit == "ns")
    mult = 1;
  else if (unit == "m" || unit == "min")
    mult = 60e9;
  else if (unit == "h")
    mult = 3600e9;
  else
    throw ConfigError("invalid duration unit in '" + text + "' (use ns, us, ms, s, m or h)");
  double ns = v * mult;
  if (ns >= 1.8e19) throw ConfigError("duration '" + text + "' is out of range");
  return static_cast<uint64_t>(std::llround(ns));
}

std::string format_size(uint64_t b) {
  const char* units[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (u < 4 && b >= 1024 && b % 1024 == 0) {
    b /= 1024;
    u++;
  }
  return std::to_string(b) + units[u];
}

std::string format_duration(uint64_t ns) {
  char buf[32];
  if (ns >= 1000000000ull)
    std::snprintf(buf, sizeof buf, "%.3gs", ns / 1e9);
  else if (ns >= 1000000ull)
    std::snprintf(buf, sizeof buf, "%.3gms", ns / 1e6);
  else if (ns >= 1000ull)
    std::snprintf(buf, sizeof buf, "%.3gus", ns / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lluns", static_cast<unsigned long long>(ns));
  return buf;
}

std::vector<std::string> split_list(const std::string& text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t comma = text.find(sep, start);
    out.push_back(text.substr(start, comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

std::vector<std::string> RunConfig::guest_list() const {
  if (!guest_file.empty()) return {"file:" + guest_file};
  return split_list(guest);
}

std::string RunConfig::guest_for_vm(uint32_t vm) const {
  auto list = guest_list();
  return list[vm % list.size()];
}

const std::vector<std::string>& lock_classes() {
  // Every class names locks that exist: call (cross-calls), runq (schedule locks), sched
  // (credit accounting), pod (each VM's populate-on-demand lock, Xen's p2m/pod lock).
  static const std::vector<std::string> c = {"call", "runq", "sched", "pod"};
  return c;
}

const std::vector<std::string>& builtin_guest_names() {
  static const std::vector<std::string> names = {"hello",     "idle",  "spin", "boot-zero",
                                                 "pingpong",  "crash", "loop", "hcbench",
                                                 "blockwake", "fuzz"};
  return names;
}

namespace {

uint32_t parse_u32(const std::string& s, const std::string& what) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos)
    throw ConfigError(what + ": '" + s + "' is not a number");
  return uint32_t(std::stoul(s));
}

// "vm3:weight=512,cap=50" -> vm 3, {weight: 512, cap: 50}
std::pair<uint32_t, std::map<std::string, uint32_t>> parse_vm_opt(const std::string& spec) {
  const std::string what = "--vm '" + spec + "'";
  size_t colon = spec.find(':');
  if (spec.rfind("vm", 0) != 0 || colon == std::string::npos)
    throw ConfigError(what + ": expected vmN:key=value[,key=value] (keys: weight, cap)");
  uint32_t vm = parse_u32(spec.substr(2, colon - 2), what);
  std::map<std::string, uint32_t> kv;
  for (const auto& part : split_list(spec.substr(colon + 1))) {
    size_t eq = part.find('=');
    std::string key = part.substr(0, eq);
    if (eq == std::string::npos || (key != "weight" && key != "cap"))
      throw ConfigError(what + ": unknown setting '" + part + "' (keys: weight, cap)");
    kv[key] = parse_u32(part.substr(eq + 1), what);
  }
  return {vm, kv};
}

}  // namespace

// The last --vm setting of `key` for `vm`, else `fallback`.
static uint32_t vm_setting(const std::vector<std::string>& vm_opts, uint32_t vm, const char* key,
                           uint32_t fallback) {
  for (const auto& o : vm_opts) {
    auto [i, kv] = parse_vm_opt(o);
    if (i == vm && kv.count(key)) fallback = kv[key];
  }
  return fallback;
}

uint32_t RunConfig::weight_of(uint32_t vm) const {
  return vm_setting(vm_opts, vm, "weight", weight);
}
uint32_t RunConfig::cap_of(uint32_t vm) const { return vm_setting(vm_opts, vm, "cap", cap); }

uint64_t RunConfig::pod_target_granules() const {
  if (pod_target.empty()) return 0;
  const uint64_t ram = mem - KS_RAM_GPA;
  uint64_t bytes;
  if (pod_target.back() == '%') {
    uint32_t pct = parse_u32(pod_target.substr(0, pod_target.size() - 1), "--pod-target");
    if (pct < 1 || pct > 100) throw ConfigError("--pod-target: a percentage must be 1-100");
    bytes = ram / 100 * pct;
  } else {
    try {
      bytes = parse_size(pod_target);
    } catch (const ConfigError& e) {
      throw ConfigError(std::string("--pod-target: ") + e.what());
    }
  }
  if (bytes > ram)
    throw ConfigError("--pod-target " + pod_target + " exceeds the guest's free RAM (" +
                      format_size(ram) + ")");
  if (bytes < pod_granule)
    throw ConfigError("--pod-target must be at least one granule (" + format_size(pod_granule) +
                      ")");
  return bytes / pod_granule;
}

std::vector<std::string> RunConfig::ineffective_settings() const {
  std::vector<std::string> w;
  const RunConfig d;  // the defaults
  if (sched == "host") {
    auto unused = [&](bool set, const std::string& flag) {
      if (set) w.push_back(flag + " has no effect with --sched host (Linux schedules the vCPUs)");
    };
    unused(pcpus != d.pcpus, "--pcpus");
    unused(pcpu_bind, "--pcpu-bind");
    unused(vcpu_pin != d.vcpu_pin, "--vcpu-pin");
    unused(balance != d.balance, "--balance");
    unused(tslice_ns != d.tslice_ns, "--tslice");
    unused(ratelimit_ns != d.ratelimit_ns, "--ratelimit");
    unused(migration_delay_ns != d.migration_delay_ns, "--migration-delay");
    unused(weight != d.weight, "--weight");
    unused(cap != d.cap, "--cap");
    unused(!vm_opts.empty(), "--vm");
  } else if (sched == "rr") {
    auto unused = [&](bool set, const std::string& flag) {
      if (set) w.push_back(flag + " has no effect with --sched rr (no credits)");
    };
    unused(weight != d.weight, "--weight");
    unused(cap != d.cap, "--cap");
    unused(!vm_opts.empty(), "--vm");
  }
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (sched != "host" && cpus > 0 && effective_pcpus() > uint32_t(cpus))
    w.push_back("--pcpus " + std::to_string(effective_pcpus()) + " pCPU threads time-share " +
                std::to_string(cpus) + " host CPUs");
  return w;
}

uint32_t RunConfig::procs_given() const {
  if (procs == "auto" || !decimal_count_error(procs).empty()) return 0;
  return uint32_t(std::min<uint64_t>(parse_u64(procs), 100000));
}

nlohmann::json Shard::to_json() const {
  return {{"index", index}, {"count", count},           {"first_vm", first_vm},
          {"vms", vms},     {"first_pcpu", first_pcpu}, {"pcpus", pcpus}};
}

Shard Shard::from_json(const nlohmann::json& j) {
  Shard s;
  try {
    s.index = j.at("index").get<uint32_t>();
    s.count = j.at("count").get<uint32_t>();
    s.first_vm = j.at("first_vm").get<uint32_t>();
    s.vms = j.at("vms").get<uint32_t>();
    s.first_pcpu = j.at("first_pcpu").get<uint32_t>();
    s.pcpus = j.at("pcpus").get<uint32_t>();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(std::string("invalid shard: ") + e.what());
  }
  if (s.count < 1 || s.index >= s.count || s.vms < 1)
    throw ConfigError("invalid shard: index, count or vms out of range");
  return s;
}

uint32_t RunConfig::effective_pcpus() const {
  return pcpus ? pcpus : uint32_t(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
}

std::vector<uint32_t> RunConfig::pin_of(uint32_t k) const {
  if (vcpu_pin == "none") return {};
  if (vcpu_pin == "1:1") return {k % effective_pcpus()};
  auto list = split_list(vcpu_pin);
  return {parse_u32(list[k % list.size()], "--vcpu-pin")};
}

void RunConfig::validate() const {
  if (vms < 1 || vms > 100000) throw ConfigError("--vms must be between 1 and 100000");
  if (vcpus < 1 || vcpus > KS_MAX_VCPUS)
    throw ConfigError("--vcpus must be between 1 and " + std::to_string(KS_MAX_VCPUS));
  if (mem < vmm::kMinGuestMem || mem > vmm::kMaxGuestMem)
    throw ConfigError("--mem must be between " + format_size(vmm::kMinGuestMem) + " and " +
                      format_size(vmm::kMaxGuestMem) + " (got " + format_size(mem) + ")");
  if (mem % (2ull << 20) != 0) throw ConfigError("--mem must be a multiple of 2M");
  {
    const auto& names = builtin_guest_names();
    for (const auto& g : guest_list()) {
      if (g.rfind("file:", 0) == 0) {
        if (g.size() == 5) throw ConfigError("--guest: 'file:' needs a path (file:PATH)");
        continue;
      }
      if (std::find(names.begin(), names.end(), g) == names.end()) {
        std::string all;
        for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
        throw ConfigError("unknown --guest '" + g + "' (built-in guests: " + all + ")");
      }
    }
  }
  if (guest_args.size() > KS_GUEST_ARGS)
    throw ConfigError("at most " + std::to_string(KS_GUEST_ARGS) + " --guest-arg values");
  if (duration_ns < 1000000ull) throw ConfigError("--duration must be at least 1ms");
  if (sched != "host" && sched != "credit" && sched != "rr")
    throw ConfigError("unknown --sched '" + sched + "' (available: host, credit, rr)");
  if (numa && (sched == "host" || !pcpu_bind))
    throw ConfigError(
        "--numa needs --sched credit or rr with --pcpu-bind (pCPUs must sit on known nodes)");
  if (pcpus > 4096)
    throw ConfigError("--pcpus must be between 1 and 4096 (omitted: one per host CPU)");
  if (balance != "xen" && balance != "affinity" && balance != "counted" && balance != "hybrid" &&
      balance != "none")
    throw ConfigError("unknown --balance '" + balance +
                      "' (available: xen, affinity, counted, hybrid, none)");
  if (vcpu_pin != "none" && vcpu_pin != "1:1") {
    for (const auto& p : split_list(vcpu_pin))
      if (parse_u32(p, "--vcpu-pin '" + vcpu_pin + "' (none, 1:1 or a list of pCPU numbers)") >=
          effective_pcpus())
        throw ConfigError("--vcpu-pin: pCPU " + p + " does not exist (there are " +
                          std::to_string(effective_pcpus()) + ")");
  }
  if (tslice_ns < 1'000'000 || tslice_ns > 1'000'000'000)
    throw ConfigError("--tslice must be between 1ms and 1000ms");
  if (ratelimit_ns > tslice_ns) throw ConfigError("--ratelimit must not exceed --tslice");
  if (migration_delay_ns > 1'000'000'000) throw ConfigError("--migration-delay must be at most 1s");
  if (weight < 1 || weight > 65535) throw ConfigError("--weight must be between 1 and 65535");
  if (cap > 100 * KS_MAX_VCPUS) throw ConfigError("--cap is a % of one pCPU, at most 6400");
  std::set<std::pair<uint32_t, std::string>> set_once;  // a VM's setting given twice is ambiguous
  for (const auto& o : vm_opts) {
    auto [vm, kv] = parse_vm_opt(o);
    if (vm >= vms)
      throw ConfigError("--vm '" + o + "': there are only " + std::to_string(vms) + " VMs");
    for (const auto& [key, value] : kv)
      if (!set_once.insert({vm, key}).second)
        throw ConfigError("--vm: " + key + " of vm" + std::to_string(vm) + " is given twice");
    if (kv.count("weight") && (kv["weight"] < 1 || kv["weight"] > 65535))
      throw ConfigError("--vm '" + o + "': weight must be between 1 and 65535");
    if (kv.count("cap") && kv["cap"] > 100 * KS_MAX_VCPUS)
      throw ConfigError("--vm '" + o + "': cap is a % of one pCPU, at most 6400");
  }
  if (out.empty()) throw ConfigError("--out must not be empty");
  if (pod_granule != 4096 && pod_granule != (2ull << 20))
    throw ConfigError("--pod-granule must be 4K or 2M");
  if (sweep_stride < 1 || sweep_stride > 4096) throw ConfigError("--sweep-stride must be 1-4096");
  if (sweep_limit < 1) throw ConfigError("--sweep-limit must be positive");
  if (pod_reclaim != "xen" && pod_reclaim != "batched")
    throw ConfigError("unknown --pod-reclaim '" + pod_reclaim + "' (available: xen, batched)");
  if (call_lock != "global" && call_lock != "percpu")
    throw ConfigError("unknown --call-lock '" + call_lock + "' (available: global, percpu)");
  if (fault_threads > kMaxFaultThreads)
    throw ConfigError("--fault-threads must be 0 (one per pCPU) or 1-" +
                      std::to_string(kMaxFaultThreads));
  if (procs != "auto") {
    if (std::string why = decimal_count_error(procs); !why.empty() || procs == "0")
      throw ConfigError("--procs must be auto or a count of at least 1 (got '" + procs + "')");
    const uint32_t k = procs_given();
    if (k > vms)
      throw ConfigError("--procs " + procs + " exceeds --vms " + std::to_string(vms) +
                        ": every VMM process needs at least one VM");
    if (sched != "host" && k > effective_pcpus())
      throw ConfigError("--procs " + procs + " exceeds the " + std::to_string(effective_pcpus()) +
                        " pCPUs of --sched " + sched +
                        ": each process schedules its own pool of at least one pCPU (give more "
                        "--pcpus or fewer --procs)");
  }
  pod_target_granules();  // validates --pod-target
  try {
    locks::LockPolicy::parse(lock, lock_classes());
  } catch (const std::invalid_argument& e) {
    throw ConfigError(std::string("--lock: ") + e.what());
  }
}

nlohmann::json RunConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for (const Setting& s : run_settings()) j[s.key] = s.to_json(*this);
  return j;
}

RunConfig RunConfig::from_json(const nlohmann::json& j) {
  RunConfig c;
  if (!j.is_object()) throw ConfigError("invalid config: not an object");
  for (const Setting& s : run_settings()) {
    if (!j.contains(s.key)) {
      if (s.required_in_json) throw ConfigError("invalid config: '" + s.key + "' is missing");
      if (!s.legacy.is_null()) s.from_json(c, s.legacy);
      continue;
    }
    try {
      s.from_json(c, j.at(s.key));
    } catch (const nlohmann::json::exception&) {
      // The key and what it holds, not the library's message.
      throw ConfigError(
          "invalid config: '" + s.key + "' holds " + std::string(j.at(s.key).type_name()) + " " +
          j.at(s.key).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).substr(0, 40) +
          ", of the wrong type");
    }
  }
  c.validate();
  return c;
}

}  // namespace kvmscale::app
