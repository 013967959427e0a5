// libFuzzer target: a run record as `compare` and `matrix --resume` read it (issue 12). Any
// bytes: parse, validate (record_problem), extract metrics from what passes, and read the same
// bytes as a file the way matrix resume does. Nothing may crash, hang or throw past the API.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "study/matrix.hpp"
#include "study/metrics.hpp"
#include "tests/fuzz/fuzz_file.hpp"

using namespace kvmscale;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json r = nlohmann::json::parse(data, data + size, nullptr, false);
  if (!r.is_discarded() && study::record_problem(r).empty()) {
    for (const auto& [name, value] : study::run_metrics(r)) (void)name, (void)value;
  }
  const std::string path = fuzz::write_temp_file(data, size, "record.json");
  nlohmann::json out;
  std::string why;
  study::read_finished_record(path, out, &why);
  return 0;
}
