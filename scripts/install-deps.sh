#!/usr/bin/env bash
# Installs the Debian 12 packages kvmscale needs, only those missing. Run as root.
set -euo pipefail
packages=(
  build-essential cmake make pkg-config git      # toolchain (gcc builds the guests too)
  linux-libc-dev                                 # KVM API headers (linux/kvm.h)
  liburing-dev libnuma-dev numactl               # io_uring, NUMA placement
  libgtest-dev libgmock-dev googletest           # tests
  libbenchmark-dev                               # benchmarks
  libcli11-dev nlohmann-json3-dev                # CLI, JSON
  libboost-context-dev                           # fibers of the simulation (sim/, docs/sim.md)
  libck-dev                                      # Concurrency Kit: lock baselines in bench-locks
  clang-format                                   # formatting check
  clang-14 libclang-rt-14-dev                    # libFuzzer targets (scripts/fuzz.sh)
  gnuplot-nox                                    # plots
  slurm-wlm munge                                # tests/slurm: a one-node Slurm cluster
  systemtap-sdt-dev                              # <sys/sdt.h>: USDT probes (docs/tracing.md)
  bpftrace                                       # the probe test watches them fire
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all build dependencies present"
fi
