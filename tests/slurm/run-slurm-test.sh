#!/usr/bin/env bash
# A matrix through a real one-node Slurm cluster on this machine: munged, slurmctld and slurmd
# started from a temp dir (nothing in /etc touched), a small matrix submitted as a job array, one
# task cancelled with scancel, the missing run resubmitted with --resume --slurm, the CSV checked.
# Skips (exit 0, "SKIP: why") where Slurm cannot be installed or started, or /dev/kvm is unusable.
# Usage: tests/slurm/run-slurm-test.sh [path/to/kvmscale]   (default build/kvmscale)
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
kvmscale=$(realpath "${1:-build/kvmscale}")
skipped=0
skip() { echo "SKIP: slurm test: $*"; skipped=1; exit 0; }
fail() { echo "FAIL: slurm test: $*" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - start ))s; }

[[ -x $kvmscale ]] || fail "$kvmscale is not built"
[[ -r /dev/kvm && -w /dev/kvm ]] || skip "/dev/kvm is not usable here"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [[ $(id -u) == 0 ]] || skip "slurm-wlm and munge are not installed and we are not root"
  echo "installing slurm-wlm and munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
    >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
    >/dev/null 2>&1; } || skip "apt-get could not install slurm-wlm and munge"
fi
[[ $(id -u) == 0 ]] || skip "slurmd must run as root to start jobs"

tmp=$(mktemp -d /tmp/kvmscale-slurm.XXXXXX)
chmod 700 "$tmp"
pids=()
cleanup() {
  local rc=$?
  # Our jobs first (a failed check may leave some), then the daemons, then the files.
  if [[ -n ${SLURM_CONF:-} ]] && squeue -h -o %i 2>/dev/null | grep -q .; then
    scancel --user="$(id -un)" 2>/dev/null || true  # SLURM_CONF: only this test's cluster
    for _ in $(seq 50); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  [[ $rc == 0 ]] || { echo "--- slurmctld log"; tail -20 "$tmp/slurmctld.log" 2>/dev/null || true;
                      echo "--- slurmd log"; tail -20 "$tmp/slurmd.log" 2>/dev/null || true; }
  rm -rf "$tmp"
  local how=done
  ((rc == 0)) || how=FAILED
  ((skipped)) && how=skipped
  echo "slurm test: $how in $(elapsed)"
}
trap cleanup EXIT

# munge: its own key, socket and files, so a host munged (if any) is left alone.
mkdir -p "$tmp/munge" "$tmp/state" "$tmp/spool"
chmod 700 "$tmp/munge"
mungekey --create --keyfile="$tmp/munge/munge.key" >/dev/null 2>&1 ||
  dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$tmp/munge/munge.key"
munged --force --foreground --key-file="$tmp/munge/munge.key" --socket="$tmp/munge/socket" \
  --pid-file="$tmp/munge/munged.pid" --log-file="$tmp/munge/munged.log" \
  --seed-file="$tmp/munge/seed" >/dev/null 2>&1 &
pids+=($!)

# The node as slurmd sees it (real CPU count and memory), a little memory held back; addressed
# as 127.0.0.1 so the host name need not resolve.
node=$(slurmd -C | head -1) || skip "slurmd -C failed"
name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
node=${node/RealMemory=$mem/RealMemory=$((mem * 9 / 10))}
port=$(( 20000 + RANDOM % 20000 ))
cat >"$tmp/slurm.conf" <<CONF
ClusterName=kvmscale-test
SlurmctldHost=$name(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$tmp/munge/socket
CredType=cred/munge
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=$name Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$tmp/slurm.conf
for _ in $(seq 50); do [[ -S $tmp/munge/socket ]] && break; sleep 0.1; done
[[ -S $tmp/munge/socket ]] || skip "munged did not start: $(cat "$tmp/munge/munged.log" 2>/dev/null)"
slurmctld -D -i -f "$SLURM_CONF" >/dev/null 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >/dev/null 2>&1 &
pids+=($!)
up=0
for _ in $(seq 100); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then up=1; break; fi
  sleep 0.2
done
((up)) || skip "slurmctld/slurmd did not come up: $(tail -3 "$tmp/slurmctld.log" "$tmp/slurmd.log" 2>/dev/null)"
echo "one-node cluster up ($name, $cpus CPUs) after $(elapsed)"

wait_jobs() {  # until none of our jobs is queued or running (at most 3 minutes)
  for _ in $(seq 900); do
    [[ -z $(squeue -h -o %i) ]] && return 0
    sleep 0.2
  done
  squeue; fail "jobs did not finish in 3 minutes"
}
csv_rows() { tail -n +2 "$1/summary.csv" | wc -l; }

# 2 x 2 cells x 1 repeat of 1-VM or 2-VM spin runs of 3 s; two tasks at once (each takes the
# directory's lock shared), so the last task is still pending when the first two run.
m=$tmp/matrix
args=(matrix --guest spin --mem 8M --vms 1,2 --sched credit,host --duration 3s --repeat 1
      --out "$m" --no-plots --slurm --slurm-throttle 2)
job=$("$kvmscale" "${args[@]}") || fail "submission failed"
[[ $job =~ ^[0-9]+$ ]] || fail "no job id printed: $job"
script=$m/slurm/submit-1.sbatch
[[ -f $script ]] || fail "no script in $m/slurm"
cell_of() { sed -n '/^cells=(/,/^)/p' "$1" | sed -n "$(( $2 + 2 ))p" | tr -d " '"; }
# Cancel task 3 while it is pending, and task 0 while it runs (SIGTERM: its run is not kept).
scancel "${job}_3" || fail "scancel ${job}_3"
for _ in $(seq 100); do
  [[ $(squeue -h -j "${job}_0" -o %t 2>/dev/null) == R ]] && break
  sleep 0.1
done
[[ $(squeue -h -j "${job}_0" -o %t 2>/dev/null) == R ]] || fail "task 0 never ran"
sleep 1  # into its run
scancel "${job}_0" || fail "scancel ${job}_0"
wait_jobs
echo "first job done after $(elapsed)"
"$kvmscale" matrix --collect --out "$m" --no-plots || fail "collect"
(( $(csv_rows "$m") == 2 )) || { cat "$m/summary.csv"; tail -n 3 "$m"/slurm/logs/*; fail "expected 2 runs after the cancels"; }
for t in 0 3; do
  [[ ! -f $m/cells/$(cell_of "$script" $t).json ]] || fail "cancelled task $t left a record"
done
grep -q "interrupted, its run is not kept" "$m/slurm/logs/${job}_0.out" ||
  { cat "$m/slurm/logs/${job}_0.out"; fail "task 0 was not interrupted by scancel"; }

# A second matrix in the same DIR is refused.
"$kvmscale" matrix --guest spin --vms 3,4 --out "$m" --slurm >/dev/null 2>&1 &&
  fail "a second matrix was accepted in $m"

job2=$("$kvmscale" matrix --resume --slurm --out "$m" --no-plots) || fail "resubmission failed"
grep -q -- "--array=0-1$" "$m/slurm/submit-2.sbatch" || fail "the resubmission is not two tasks"
for t in 0 3; do
  grep -q "'$(cell_of "$script" $t)'" "$m/slurm/submit-2.sbatch" || fail "task $t not resubmitted"
done
wait_jobs
"$kvmscale" matrix --collect --out "$m" --no-plots || fail "collect"
(( $(csv_rows "$m") == 4 )) || { cat "$m/summary.csv"; tail -n 3 "$m"/slurm/logs/*; fail "expected 4 runs"; }
grep -q "\"hostname\": \"$(hostname)\"" "$m/cells/$(cell_of "$script" 0).json" ||
  fail "no hostname in the record"
"$kvmscale" matrix --resume --slurm --out "$m" --no-plots 2>&1 | grep -q "nothing to submit" ||
  fail "a finished matrix was submitted again"
echo "OK: 4 of 4 runs through Slurm (jobs $job, $job2): one pending and one running task cancelled, both resubmitted"
