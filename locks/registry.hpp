// Names to strategies, the per-run lock policy (--lock), and the registry that creates every
// named lock of a run and reports their profiles.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "locks/any_lock.hpp"

namespace kvmscale::locks {

const std::vector<std::string>& strategy_names();
std::optional<Strategy> strategy_from_name(const std::string& name);
const char* strategy_name(Strategy s);

struct LockPolicy {
  Strategy fallback = Strategy::Ticket;
  std::map<std::string, Strategy> per_class;
  bool profile = true;

  // "mcs" | "call=mcs,runq=ticket" | "mcs,call=ticket". Classes must be in known_classes (empty:
  // any). Throws std::invalid_argument naming the bad part and the valid choices.
  static LockPolicy parse(const std::string& spec, const std::vector<std::string>& known_classes);
  Strategy for_class(const std::string& cls) const;
  std::string to_string() const;  // parse(to_string()) gives the same policy
};

// Wait statistics of a set of locks, one row of the report.
nlohmann::json stats_json(const LockStats& s);

class LockRegistry {
 public:
  // With `external` (a simulation's factory, which must outlive the registry), every lock is
  // made by it, standing for the strategy the policy gives its class.
  explicit LockRegistry(LockPolicy policy, ExternalLockFactory* external = nullptr)
      : policy_(std::move(policy)), external_(external) {}
  const LockPolicy& policy() const { return policy_; }

  // A lock of class `cls` with the policy's strategy; profiled as `name` when profiling is on.
  std::unique_ptr<AnyLock> make(const std::string& cls, const std::string& name);

  // {"policy", "classes": {cls: stats}, "locks": [{name, class, strategy, stats}]}. Call when no
  // lock is in use.
  nlohmann::json report() const;
  // One line per class then per busy lock, as Xen's xenlockprof prints them.
  std::string table() const;

 private:
  LockPolicy policy_;
  ExternalLockFactory* external_;
  mutable std::mutex mu_;
  std::deque<LockProfile> profiles_;   // stable addresses
  std::vector<Strategy> strategies_;   // of profiles_[i]
  std::set<std::string> class_names_;  // stable storage for the names locks report to probes
};

}  // namespace kvmscale::locks
