#!/usr/bin/env bash
# A real single-node Slurm on localhost for tests/slurm.rs (and anyone who
# wants to try `imet submit --engine slurm` on one machine), following
# docs/slurm-local.md: installs Debian's slurm-wlm and munge when missing,
# starts munged, slurmctld and slurmd as root with a minimal slurm.conf, and
# waits until the node is idle. Idempotent: daemons already running are
# reused. The last lines printed are `STARTED=0|1` (whether this call started
# a daemon) and `SLURM_CONF=<path>`; export the latter before calling
# sbatch/squeue.
#
#   bash ci/setup-slurm.sh           # install if needed, start if needed
#   bash ci/setup-slurm.sh install   # only install the packages (ci/test.sh)
#   bash ci/setup-slurm.sh stop      # stop the daemons it started (by pid file)
#
# State, logs and pid files live in $IMET_SLURM_DIR (default /tmp/imet-slurm).
set -euo pipefail
dir="${IMET_SLURM_DIR:-/tmp/imet-slurm}"
conf="$dir/slurm.conf"
munge_pid=/run/munge/munged.pid

alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
# Stops the daemon of pid file $1 and waits until it has exited.
stop() {
  if alive "$1"; then
    kill "$(cat "$1")"
    for _ in $(seq 100); do alive "$1" || break; sleep 0.1; done
    echo "stopped $(basename "$1" .pid)"
  fi
  rm -f "$1"
}

if [ "${1:-}" = stop ]; then
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do stop "$f"; done
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "ci/setup-slurm.sh must run as root (it installs packages and starts slurmd as root)" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  echo "installing slurm-wlm and munge (Debian packages)"
  if ! command -v apt-get >/dev/null; then
    echo "no apt-get here: install Slurm (slurmctld, slurmd, sbatch) and munge by hand" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
if [ "${1:-}" = install ]; then
  echo "slurm-wlm $(dpkg-query -W -f '${Version}' slurm-wlm 2>/dev/null || echo '(not from apt)') and munge installed"
  exit 0
fi

mkdir -p "$dir/state" "$dir/spool"
started=0

# munge: a key readable only by its user, then the daemon (as root, --force).
if ! alive "$munge_pid"; then
  mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  /usr/sbin/munged --force </dev/null >/dev/null 2>>"$dir/munged.err" || { cat "$dir/munged.err" >&2; exit 1; }
  for _ in $(seq 50); do alive "$munge_pid" && break; sleep 0.1; done
  cp "$munge_pid" "$dir/munged.pid"
  started=1
fi

host="$(hostname -s)"
# The node claims 16 CPUs and 64 GB whatever the machine has
# (config_overrides), so jobs sized for a real cluster (the plan's folds and
# ensemble jobs ask for 4 CPUs and 16 GB) still run here.
want="ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
NodeName=$host CPUs=16 RealMemory=65536 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP"
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  # A changed configuration needs fresh daemons.
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do stop "$f"; done
  printf '%s\n' "$want" > "$conf"
fi
export SLURM_CONF="$conf"

if ! alive "$dir/slurmctld.pid"; then slurmctld -f "$conf" </dev/null >/dev/null 2>>"$dir/slurmctld.err"; started=1; fi
# slurmd registers once the controller answers (it backs off for long after a miss).
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
if ! alive "$dir/slurmd.pid"; then slurmd -f "$conf" </dev/null >/dev/null 2>>"$dir/slurmd.err"; started=1; fi

state=""
for _ in $(seq 60); do
  state="$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1 || true)"
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|inval*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
# The state may be recovered from a saved one before slurmd registers: run
# one real job step to be sure jobs start.
case "$state" in
  idle|mixed|allocated|completing) timeout 60 srun -N1 -n1 -t 1 true >/dev/null 2>&1 || state="unable to run a job step" ;;
esac
case "$state" in
  idle|mixed|allocated|completing) echo "slurm node $host is $state and runs jobs" ;;
  *)
    echo "slurm node $host did not become idle (state: '${state:-none}'); logs:" >&2
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    exit 1 ;;
esac
echo "STARTED=$started"
echo "SLURM_CONF=$conf"
