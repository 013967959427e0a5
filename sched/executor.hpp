// Who runs the vCPUs. An Executor owns host threads and drives Vm::run_once(); the Testbed
// only starts, watches and stops it, so schedulers plug in behind this interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vmm/vm.hpp"

namespace kvmscale::sched {

class Executor {
 public:
  virtual ~Executor() = default;
  virtual const char* name() const = 0;
  // Starts running every vCPU of every VM given at construction.
  virtual void start() = 0;
  // True once every vCPU has exited or its VM has stopped.
  virtual bool all_done() const = 0;
  // Kicks every vCPU out of guest mode, wakes blocked ones and joins all threads. Idempotent.
  virtual void stop() = 0;
};

// `--sched host`: one host thread per vCPU, scheduled by Linux (what an ordinary KVM VMM does).
std::unique_ptr<Executor> make_host_executor(std::vector<vmm::Vm*> vms);

}  // namespace kvmscale::sched
