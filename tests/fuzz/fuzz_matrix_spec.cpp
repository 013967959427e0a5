// libFuzzer target: DIR/matrix.json as `matrix --resume`, `--dry-run` and `compare --by` load
// it (issue 12 item 6: an axis without values segfaulted). A spec that loads is validated, its
// size computed without expanding, and small ones expanded into cells and their run flags.
#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "app/config.hpp"
#include "study/matrix.hpp"
#include "tests/fuzz/fuzz_file.hpp"

using namespace kvmscale;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string file = fuzz::write_temp_file(data, size, "matrix.json");
  const std::string dir = file.substr(0, file.rfind('/'));
  try {
    study::MatrixSpec spec = study::load_spec(dir);
    spec.validate();
    if (spec.run_count() <= 256) {
      for (const auto& cell : study::expand(spec)) study::cell_args(spec, cell);
    }
    study::MatrixSpec::from_json(spec.to_json());  // what it writes back must load again
  } catch (const app::ConfigError&) {
  }
  return 0;
}
