#!/usr/bin/env bash
# Start a single-node Slurm test cluster on loopback: munged, slurmctld and slurmd, all as root,
# without cgroups and without accounting, in a state directory of their own.
#
#   .ci/slurm-up.sh [STATE_DIR]        (default: $TRPO_LAB_SLURM_DIR or /tmp/trpo-lab-slurm)
#   export SLURM_CONF=STATE_DIR/slurm.conf TRPO_LAB_TEST_SLURM_CONF=STATE_DIR/slurm.conf
#   .ci/slurm-down.sh [STATE_DIR]      stops the daemons this script started (by pid)
#
# Needs Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge). Two partitions share
# the node: `debug` (default) and `urgent`, whose jobs preempt debug's (PreemptMode=REQUEUE,
# GraceTime 20 s, the job's --signal first: SlurmctldParameters=preempt_send_user_signal).
# Ports: $TRPO_LAB_SLURM_PORT (slurmctld, default 16817) and the next one (slurmd).
set -euo pipefail

DIR="$(realpath -m "${1:-${TRPO_LAB_SLURM_DIR:-/tmp/trpo-lab-slurm}}")"
CTLD_PORT="${TRPO_LAB_SLURM_PORT:-16817}"
SLURMD_PORT=$((CTLD_PORT + 1))
HOST="$(hostname -s)"
CPUS="${TRPO_LAB_SLURM_CPUS:-2}"
CONF="$DIR/slurm.conf"

for tool in munged mungekey slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || {
        echo "slurm-up: $tool not found; install Debian's slurm-wlm and munge" >&2
        exit 1
    }
done
if [[ -f "$DIR/slurmctld.pid" ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    echo "slurm-up: a cluster is already running from $DIR (stop it with .ci/slurm-down.sh)" >&2
    exit 1
fi

rm -rf "$DIR"
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
chmod 700 "$DIR"

mungekey --create --keyfile="$DIR/munge.key" --force
chmod 400 "$DIR/munge.key"
munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge.seed"

cat >"$CONF" <<EOF
# Written by .ci/slurm-up.sh: a single-node test cluster on loopback.
ClusterName=trpolab
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups here: track processes through /proc, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
# no accounting: sacct fails, submitit says "Bypassing sacct error"
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
SlurmdParameters=config_overrides
# a job gets KillWait seconds between SIGTERM and SIGKILL (checkpoint time)
KillWait=30
MinJobAge=300
# preemption: jobs of the higher-tier partition requeue the lower tier's
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=urgent Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF

export SLURM_CONF="$CONF"
slurmctld -f "$CONF" -c
slurmd -f "$CONF" -N "$HOST"

deadline=$((SECONDS + 60))
until [[ "$(sinfo -h -o %T 2>/dev/null | head -n1)" == idle ]]; do
    if ((SECONDS > deadline)); then
        echo "slurm-up: node not idle after 60 s; logs in $DIR/log" >&2
        sinfo >&2 || true
        exit 1
    fi
    sleep 0.5
done
echo "slurm-up: cluster up in $DIR (node $HOST, $CPUS CPUs, partitions debug, urgent)"
echo "export SLURM_CONF=$CONF TRPO_LAB_TEST_SLURM_CONF=$CONF"
