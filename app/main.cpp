// The kvmscale binary: the application's CLI plus the subcommands of the layers above it. The one
// file allowed to include every layer (scripts/check-layers.cmake).
#include "app/cli.hpp"
#include "bench/lock_bench_cli.hpp"
#include "study/study_cli.hpp"

int main(int argc, char** argv) {
  auto study = kvmscale::study::study_subcommands();
  auto bench_locks = kvmscale::bench::bench_locks_subcommand();
  return kvmscale::app::cli_main(argc, argv, {study.get(), bench_locks.get()});
}
