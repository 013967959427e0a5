// The run record: the JSON that explains a run (docs/run-record.md), its atomic file write and
// the human summary.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/config.hpp"
#include "app/host_info.hpp"
#include "vmm/vm.hpp"

namespace kvmscale::app {

// 2 added host facts (microcode, smt, numa, kvm_params) and tool build_type, sanitize, probes,
// command_line. Readers accept every version from kOldestRecordSchemaVersion: the fields they
// read are the same in all of them.
inline constexpr int kRecordSchemaVersion = 2;
inline constexpr int kOldestRecordSchemaVersion = 1;

enum class EndReason { AllExited, Duration, Interrupted, Error };
const char* end_reason_name(EndReason r);

struct RunTiming {
  uint64_t started_unix_ns = 0;  // wall clock at start, for humans
  uint64_t create_start_ns = 0;  // CLOCK_MONOTONIC: VM creation began
  uint64_t exec_start_ns = 0;    // CLOCK_MONOTONIC: executor started (the launch of every VM)
  uint64_t end_ns = 0;
  uint64_t created_ns = 0;  // CLOCK_MONOTONIC: every VM created and its kvm_run pages mapped
};

nlohmann::json vm_record(const vmm::Vm& vm, const std::string& guest, uint64_t exec_start_ns);
// A guest's console bytes as record fields: "console" is always valid UTF-8 (each invalid byte
// becomes U+FFFD); "console_base64" holds the exact bytes when they are not valid UTF-8, else null.
nlohmann::json console_fields(const std::string& bytes);
nlohmann::json make_run_record(const RunConfig& cfg, const HostInfo& host,
                               const std::vector<const vmm::Vm*>& vms, const RunTiming& t,
                               EndReason end, const std::vector<std::string>& warnings);

// temp file in the same directory, fsync, rename, fsync directory. Throws std::system_error.
// With replace == false an existing `path` is kept and the error is EEXIST (renameat2's
// RENAME_NOREPLACE, or link() where a file system lacks it): no check-then-write window.
void write_file_atomically(const std::string& path, const std::string& content,
                           bool replace = true);
// Why `dir` cannot take a record ("" if it can): a probe file is created, written and removed,
// and at least 1 MiB must be free.
std::string output_dir_unusable(const std::string& dir);
// Where `--out` puts the record: PATH if it ends in .json, else PATH/run-<stamp>.json.
std::string record_path(const std::string& out, uint64_t started_unix_ns);
// A table for people; `record` as produced by make_run_record.
std::string summary_table(const nlohmann::json& record);

std::string version_string();  // git describe at build time
// The record's "tool": name, version, build type, sanitizers, whether USDT probes are compiled
// in, and this process's full command line.
nlohmann::json tool_json();

}  // namespace kvmscale::app
