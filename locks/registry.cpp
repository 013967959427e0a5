#include "locks/registry.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace kvmscale::locks {

namespace {
const std::pair<const char*, Strategy> kStrategies[] = {
    {"ticket", Strategy::Ticket},   {"mcs", Strategy::Mcs},
    {"clh", Strategy::Clh},         {"ttas", Strategy::Ttas},
    {"pthread", Strategy::Pthread}, {"spin-yield", Strategy::SpinYield}};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

Strategy need_strategy(const std::string& name) {
  if (auto s = strategy_from_name(name)) return *s;
  throw std::invalid_argument("unknown lock strategy '" + name +
                              "' (valid: " + joined(strategy_names()) + ")");
}
}  // namespace

void LockStats::merge(const LockStats& o) {
  acquisitions += o.acquisitions;
  contended += o.contended;
  try_ok += o.try_ok;
  try_fail += o.try_fail;
  wait_ns += o.wait_ns;
  wait_max_ns = std::max(wait_max_ns, o.wait_max_ns);
  hold_samples += o.hold_samples;
  hold_sampled_ns += o.hold_sampled_ns;
  hold_max_ns = std::max(hold_max_ns, o.hold_max_ns);
  for (int i = 0; i < kWaitBuckets; i++) wait_hist[i] += o.wait_hist[i];
}

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (auto& [n, s] : kStrategies) v.emplace_back(n);
    return v;
  }();
  return names;
}

std::optional<Strategy> strategy_from_name(const std::string& name) {
  for (auto& [n, s] : kStrategies)
    if (name == n) return s;
  return std::nullopt;
}

const char* strategy_name(Strategy s) {
  for (auto& [n, st] : kStrategies)
    if (st == s) return n;
  return "?";
}

LockPolicy LockPolicy::parse(const std::string& spec, const std::vector<std::string>& known) {
  LockPolicy p;
  if (spec.empty()) throw std::invalid_argument("empty lock specification");
  bool have_default = false;
  size_t start = 0;
  for (;;) {
    size_t comma = spec.find(',', start);
    std::string part = spec.substr(start, comma - start);
    size_t eq = part.find('=');
    if (eq == std::string::npos) {
      if (have_default)
        throw std::invalid_argument("two default lock strategies in '" + spec + "'");
      p.fallback = need_strategy(part);
      have_default = true;
    } else {
      std::string cls = part.substr(0, eq);
      if (!known.empty() && std::find(known.begin(), known.end(), cls) == known.end())
        throw std::invalid_argument("unknown lock class '" + cls + "' (valid: " + joined(known) +
                                    ")");
      if (p.per_class.count(cls))
        throw std::invalid_argument("lock class '" + cls + "' given twice");
      p.per_class[cls] = need_strategy(part.substr(eq + 1));
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return p;
}

Strategy LockPolicy::for_class(const std::string& cls) const {
  auto it = per_class.find(cls);
  return it == per_class.end() ? fallback : it->second;
}

std::string LockPolicy::to_string() const {
  std::string s = strategy_name(fallback);
  for (const auto& [cls, st] : per_class) s += "," + cls + "=" + strategy_name(st);
  return s;
}

std::unique_ptr<AnyLock> LockRegistry::make(const std::string& cls, const std::string& name) {
  Strategy s = policy_.for_class(cls);
  std::lock_guard lock(mu_);
  const char* cls_name = class_names_.insert(cls).first->c_str();  // for the probes
  LockProfile* p = nullptr;
  if (policy_.profile) {
    p = &profiles_.emplace_back(cls, name);
    strategies_.push_back(s);
  }
  if (external_) return std::make_unique<AnyLock>(s, external_->make(s, cls, name), p, cls_name);
  return std::make_unique<AnyLock>(s, p, cls_name);
}

nlohmann::json stats_json(const LockStats& s) {
  std::vector<uint64_t> hist(s.wait_hist.begin(), s.wait_hist.end());
  while (!hist.empty() && hist.back() == 0) hist.pop_back();
  return {{"acquisitions", s.acquisitions},
          {"contended", s.contended},
          {"try_ok", s.try_ok},
          {"try_fail", s.try_fail},
          {"wait_ns", s.wait_ns},
          {"wait_max_ns", s.wait_max_ns},
          {"hold_ns_estimate", s.hold_ns_estimate()},
          {"hold_max_ns_sampled", s.hold_max_ns},
          {"hold_samples", s.hold_samples},
          {"wait_hist_log2_ns", hist}};
}

nlohmann::json LockRegistry::report() const {
  std::lock_guard lock(mu_);
  std::map<std::string, LockStats> classes;
  nlohmann::json locks = nlohmann::json::array();
  for (size_t i = 0; i < profiles_.size(); i++) {
    LockStats s = profiles_[i].snapshot();
    classes[profiles_[i].lock_class()].merge(s);
    locks.push_back({{"name", profiles_[i].name()},
                     {"class", profiles_[i].lock_class()},
                     {"strategy", strategy_name(strategies_[i])},
                     {"stats", stats_json(s)}});
  }
  nlohmann::json cls = nlohmann::json::object();
  for (const auto& [name, s] : classes) cls[name] = stats_json(s);
  return {{"policy", policy_.to_string()},
          {"profiling", policy_.profile},
          {"classes", cls},
          {"locks", locks}};
}

std::string LockRegistry::table() const {
  nlohmann::json r = report();
  std::string out;
  char line[256];
  auto row = [&](const std::string& name, const nlohmann::json& s) {
    std::snprintf(
        line, sizeof line,
        "%-24s lock: %10llu(%.6fs), block: %10llu(%.6fs), try-fail: %llu, max wait %.1fus\n",
        name.c_str(), (unsigned long long)s["acquisitions"].get<uint64_t>(),
        s["hold_ns_estimate"].get<uint64_t>() / 1e9,
        (unsigned long long)s["contended"].get<uint64_t>(), s["wait_ns"].get<uint64_t>() / 1e9,
        (unsigned long long)s["try_fail"].get<uint64_t>(), s["wait_max_ns"].get<uint64_t>() / 1e3);
    out += line;
  };
  out += "lock profile (" + r["policy"].get<std::string>() + "), per class:\n";
  for (const auto& [name, s] : r["classes"].items()) row("class " + name, s);
  size_t busy = 0;
  for (const auto& l : r["locks"])
    if (l["stats"]["contended"].get<uint64_t>() > 0) busy++;
  if (busy) out += "contended locks:\n";
  for (const auto& l : r["locks"])
    if (l["stats"]["contended"].get<uint64_t>() > 0) row(l["name"].get<std::string>(), l["stats"]);
  return out;
}

}  // namespace kvmscale::locks
