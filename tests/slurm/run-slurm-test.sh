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
skip() { echo "SKIP: slurm test: $*"; exit 0; }
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
  # Daemons first (their jobs die with slurmd's steps), then the files.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  [[ $rc == 0 ]] || { echo "--- slurmctld log"; tail -20 "$tmp/slurmctld.log" 2>/dev/null || true;
                      echo "--- slurmd log"; tail -20 "$tmp/slurmd.log" 2>/dev/null || true; }
  rm -rf "$tmp"
  echo "slurm test: $( ((rc == 0)) && echo done || echo FAILED) in $(elapsed)"
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

# The node as slurmd sees it (real CPU count and memory), a little memory held back.
node=$(slurmd -C | head -1) || skip "slurmd -C failed"
name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
node=${node/RealMemory=$mem/RealMemory=$((mem * 9 / 10))}
port=$(( 20000 + RANDOM % 20000 ))
cat >"$tmp/slurm.conf" <<CONF
ClusterName=kvmscale-test
SlurmctldHost=$name
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
$node State=UNKNOWN
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

# 2 x 2 cells x 1 repeat, one 1-VM or 2-VM spin run of 300 ms each; two tasks at once (shared lock).
m=$tmp/matrix
args=(matrix --guest spin --mem 8M --vms 1,2 --sched credit,host --duration 300ms --repeat 1
      --out "$m" --no-plots --slurm --slurm-throttle 2)
job=$("$kvmscale" "${args[@]}") || fail "submission failed"
[[ $job =~ ^[0-9]+$ ]] || fail "no job id printed: $job"
[[ -f $m/slurm/submit-1.sbatch ]] || fail "no script in $m/slurm"
# Throttled to two tasks at a time: the last task is still pending, cancel it.
scancel "${job}_3" || fail "scancel ${job}_3"
wait_jobs
echo "first job done after $(elapsed)"
"$kvmscale" matrix --collect --out "$m" --no-plots || fail "collect"
(( $(csv_rows "$m") == 3 )) || { cat "$m/summary.csv"; ls "$m/slurm/logs"; cat "$m"/slurm/logs/*; fail "expected 3 runs after the cancel"; }
cancelled=$(sed -n '/^cells=(/,/^)/p' "$m/slurm/submit-1.sbatch" | sed -n "5p" | tr -d " '")
[[ ! -f $m/cells/$cancelled.json ]] || fail "the cancelled cell $cancelled has a record"

# A second matrix in the same DIR is refused, even with the first one's tasks done.
"$kvmscale" matrix --guest spin --vms 3,4 --out "$m" --slurm >/dev/null 2>&1 &&
  fail "a second matrix was accepted in $m"

job2=$("$kvmscale" matrix --resume --slurm --out "$m" --no-plots) || fail "resubmission failed"
grep -q -- "--array=0-0$" "$m/slurm/submit-2.sbatch" || fail "the resubmission is not one task"
grep -q "'$cancelled'" "$m/slurm/submit-2.sbatch" || fail "the resubmission is not $cancelled"
wait_jobs
"$kvmscale" matrix --collect --out "$m" --no-plots || fail "collect"
(( $(csv_rows "$m") == 4 )) || { cat "$m/summary.csv"; cat "$m"/slurm/logs/*; fail "expected 4 runs"; }
host=$(hostname)
grep -q "\"hostname\": \"$host\"" "$m/cells/$cancelled.json" || fail "no hostname in the record"
"$kvmscale" matrix --resume --slurm --out "$m" --no-plots 2>&1 | grep -q "nothing to submit" ||
  fail "a finished matrix was submitted again"
echo "OK: 4 of 4 runs through Slurm (jobs $job, $job2), one cancelled and resubmitted"
