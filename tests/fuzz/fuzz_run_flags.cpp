// libFuzzer target: the flag parsers. The input is split at NUL bytes into arguments and parsed
// as `kvmscale run` (and every matrix cell) parses its flags; each argument also goes through
// the size, duration, whole-number, count and list parsers and the matrix axis splitter.
// Errors must be app::ConfigError (exit 2), never a crash or another exception.
#include <cstdint>
#include <string>
#include <vector>

#include "app/cli.hpp"
#include "app/config.hpp"
#include "study/matrix.hpp"

using namespace kvmscale;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args;
  std::string cur;
  for (size_t i = 0; i < size; i++) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(char(data[i]));
    }
  }
  args.push_back(cur);
  for (const auto& a : args) {
    try {
      app::parse_size(a);
    } catch (const app::ConfigError&) {
    }
    try {
      app::parse_duration_ns(a);
    } catch (const app::ConfigError&) {
    }
    try {
      app::parse_u64(a);
    } catch (const app::ConfigError&) {
    }
    app::decimal_count_error(a);
    app::split_list(a);
    for (const char* flag : {"lock", "vcpu-pin", "vms", "guest-arg"}) study::split_axis(flag, a);
  }
  try {
    app::RunConfig cfg = app::parse_run_args(args);
    cfg.validate();
    cfg.ineffective_settings();
    for (uint32_t vm = 0; vm < cfg.vms && vm < 4; vm++) cfg.weight_of(vm), cfg.cap_of(vm);
    for (uint32_t k = 0; k < 4; k++) cfg.pin_of(k);
    cfg.pod_target_granules();
    app::RunConfig::from_json(cfg.to_json());
  } catch (const app::ConfigError&) {
  }
  return 0;
}
