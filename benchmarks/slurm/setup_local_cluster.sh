#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian's slurm-wlm: munged, slurmctld, slurmd), for the
# SLURM tests and benchmarks/slurm/run.py. Idempotent: installs the packages if sbatch is missing,
# (re)writes /etc/slurm/slurm.conf from this machine (hostname, CPUs, RealMemory), starts whichever
# daemon is not running, and waits until `sinfo` shows the node idle. Needs root.
#
# cgroup-free on purpose (containers, gVisor): ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# no accounting database; finished jobs are recorded in /var/log/slurm/jobcomp.log.
#
#   sudo benchmarks/slurm/setup_local_cluster.sh          # start (or check) the cluster
#   sudo benchmarks/slurm/setup_local_cluster.sh --stop   # stop it
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    for pidfile in "$SLURMD_PID" "$CTLD_PID" "$MUNGE_PID"; do
        if alive "$pidfile"; then kill "$(cat "$pidfile")"; echo "stopped $(basename "$pidfile" .pid)"; fi
    done
}

if [[ ${1:-} == --stop ]]; then stop; exit 0; fi
if [[ $(id -u) != 0 ]]; then echo "run as root (it writes $CONF and starts the daemons)" >&2; exit 2; fi

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc --all)
# RealMemory in MB, as slurmd -C reports it (slurmd refuses a node configured with more than it has).
mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem=${mem:-$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)}

mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/d" /run/munge
new_conf=$(cat <<EOF
# Written by neuroseg benchmarks/slurm/setup_local_cluster.sh: one node, this machine.
ClusterName=neuroseg-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: process tracking by parent pid, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# A job whose dependency can never be satisfied (an upstream job failed) is cancelled, not left pending.
SchedulerParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$new_conf" ]]; then
    printf '%s\n' "$new_conf" > "$CONF"
    changed=1
    echo "wrote $CONF ($host: $cpus CPUs, ${mem} MB)"
fi

if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key /run/munge && chmod 400 /etc/munge/munge.key
mkdir -p /var/lib/munge /var/log/munge && chown munge:munge /var/lib/munge /var/log/munge
if ! alive "$MUNGE_PID"; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    echo "started munged"
fi

if [[ $changed == 1 ]]; then  # a new configuration: restart the SLURM daemons on it
    for pidfile in "$SLURMD_PID" "$CTLD_PID"; do
        if alive "$pidfile"; then
            pid=$(cat "$pidfile"); kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        fi
    done
fi
if ! alive "$CTLD_PID"; then /usr/sbin/slurmctld && echo "started slurmctld"; fi
if ! alive "$SLURMD_PID"; then /usr/sbin/slurmd && echo "started slurmd"; fi

for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    if [[ $state == idle ]]; then break; fi
    if [[ $state == down* || $state == drain* ]]; then scontrol update NodeName="$host" State=RESUME 2>/dev/null || true; fi
    sleep 1
done
if [[ $state != idle ]]; then
    echo "node $host is '${state:-not reported}', not idle, after 60 s; see $LOG_DIR/slurmctld.log and slurmd.log" >&2
    exit 1
fi
sinfo
echo "SLURM is up on $host. Stop it with: $0 --stop"
