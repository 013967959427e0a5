// The Testbed builds everything a run needs from a RunConfig, runs it to its end and returns
// the run record. It owns the lifetimes of the KVM system, VMs and executor.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "app/config.hpp"

namespace kvmscale::app {

// The run could not start or failed (no /dev/kvm, host limits, KVM errors). The CLI exits 1.
struct RunError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// SIGINT and SIGTERM must be blocked in every thread (see block_stop_signals) so that the run
// loop can wait for them synchronously; then they end a run cleanly with a record marked
// interrupted.
void block_stop_signals();

// Faults injected by tests to prove that other tests can fail. Never set outside tests.
struct TestHooks {
  // PoD flushes do nothing (no invalidate marks, no cross-call): the software TLBs must then
  // report stale hits.
  bool skip_flushes = false;
  // The thread start after this many successful ones fails as under a pids limit (-1: none).
  int fail_thread_start = -1;
  // The fault service never reads a fault, as when the kernel cannot start io_uring's worker.
  bool fault_reads_off = false;
  // The run loop throws once the vCPUs run, as any unexpected error there would (the PoD
  // runtime, executor and VMs must still be torn down in order).
  bool fail_while_running = false;
};

// A file:PATH guest's image, read as every run reads it (vmm::load_guest_file: a regular file of
// 1 byte to 1 MiB). Throws ConfigError naming the file: a bad image is bad input.
std::vector<uint8_t> read_guest_file(const std::string& path);

// Runs the configured scenario and returns its run record (docs/run-record.md).
nlohmann::json run_testbed(const RunConfig& cfg);
nlohmann::json run_testbed_with_hooks(const RunConfig& cfg, const TestHooks& hooks);

}  // namespace kvmscale::app
