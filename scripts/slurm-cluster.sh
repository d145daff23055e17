#!/usr/bin/env bash
# slurm-cluster.sh up|down|status: a real one-node Slurm cluster on 127.0.0.1, for asyncvid's tests.
#
# Debian/Ubuntu packages (slurmctld, slurmd, slurm-client, munge; slurmdbd and mariadb-server for
# accounting, so `sacct` reports final job states) are installed when missing; the
# daemons run without systemd and daemonize themselves. Nothing under /etc/slurm is touched: the
# config lives in $ASYNCVID_SLURM_ROOT (default /tmp/asyncvid-slurm) and clients find it through
# SLURM_CONF, which `up` prints as its last line (`SLURM_CONF=...`). `down` stops only the daemons
# whose pid files `up` wrote, and only if the pid still names that daemon. Needs root.
#
# Knobs: ASYNCVID_SLURM_ROOT, ASYNCVID_SLURM_CPUS (default: nproc), ASYNCVID_SLURM_PORTS ("6817 6818 6819":
# slurmctld, slurmd, slurmdbd), ASYNCVID_SLURM_ACCOUNTING (default 1: MariaDB on a unix socket only, no
# TCP port, plus slurmdbd on 127.0.0.1; 0: no accounting, `sacct` then fails and asyncvid reads logs).
# Every failure is one line on stderr ("slurm-cluster: ...") and exit status 1.
set -euo pipefail

ROOT=${ASYNCVID_SLURM_ROOT:-/tmp/asyncvid-slurm}
CONF=$ROOT/slurm.conf
RUN=$ROOT/run
LOG=$ROOT/log
NODE=$(hostname -s)
CPUS=${ASYNCVID_SLURM_CPUS:-$(nproc)}
read -r CTLD_PORT SLURMD_PORT DBD_PORT <<< "${ASYNCVID_SLURM_PORTS:-6817 6818 6819}"
DBD_PORT=${DBD_PORT:-6819}
ACCOUNTING=${ASYNCVID_SLURM_ACCOUNTING:-1}
export SLURM_CONF=$CONF

die() { echo "slurm-cluster: $*" >&2; exit 1; }
say() { echo "slurm-cluster: $*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
running() {  # running <pidfile> <comm>: the recorded pid is alive and is that program
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' < "$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
wait_until() {  # wait_until <seconds> <command...>
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
last_log_line() { tail -n 1 "$1" 2>/dev/null || echo "(no log)"; }

install_packages() {
    local missing=() p
    local wanted=(slurmctld slurmd slurm-client munge)
    [ "$ACCOUNTING" = 1 ] && wanted+=(slurmdbd mariadb-server)
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is not available to install ${missing[*]}"
    say "installing ${missing[*]}"
    # The packages' maintainer scripts must not start daemons through init: this script owns them.
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    fi
    local rc=0
    { DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        > "$LOG/apt.log" 2>&1 || rc=$?
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed (exit $rc): $(last_log_line "$LOG/apt.log")"
}

write_config() {
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat > "$CONF" <<EOF
# written by asyncvid scripts/slurm-cluster.sh; rewritten on every 'up'
ClusterName=asyncvid-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$(accounting_lines)
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( mem_mb / CPUS ))
MinJobAge=300
ReturnToService=2
SlurmdParameters=config_overrides
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

accounting_lines() {
    if [ "$ACCOUNTING" = 1 ]; then
        printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n'
        printf 'AccountingStoragePort=%s\nJobAcctGatherType=jobacct_gather/linux\n' "$DBD_PORT"
    else
        printf 'AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n'
    fi
}

start_accounting() {  # MariaDB (root reaches it through the unix socket, no password) + slurmdbd
    [ "$ACCOUNTING" = 1 ] || return 0
    if ! mariadb -e 'select 1' >/dev/null 2>&1; then
        if [ ! -d /var/lib/mysql/mysql ]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql > "$LOG/mariadb-install.log" 2>&1 \
                || die "mariadb-install-db failed: $(last_log_line "$LOG/mariadb-install.log")"
        fi
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking --innodb-buffer-pool-size=32M \
            --pid-file=/run/mysqld/mysqld.pid < /dev/null > "$LOG/mariadb.log" 2>&1 &
        wait_until 30 mariadb -e 'select 1' || die "MariaDB does not answer: $(last_log_line "$LOG/mariadb.log")"
        cp /run/mysqld/mysqld.pid "$RUN/mariadb.pid"  # recorded: `down` stops only what `up` started
    fi
    running "$RUN/slurmdbd.pid" slurmdbd && return 0
    listening "$DBD_PORT" && die "port $DBD_PORT is in use (another slurmdbd?); set ASYNCVID_SLURM_PORTS"
    cat > "$ROOT/slurmdbd.conf" <<CONF
# written by asyncvid scripts/slurm-cluster.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=asyncvid_slurm_acct
CONF
    chmod 600 "$ROOT/slurmdbd.conf"
    slurmdbd || die "slurmdbd did not start: $(last_log_line "$LOG/slurmdbd.log")"
    wait_until 20 listening "$DBD_PORT" || die "slurmdbd does not listen: $(last_log_line "$LOG/slurmdbd.log")"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged answers already (ours or the system's): use it, never stop it
    fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || die "munged did not start: $(last_log_line /var/log/munge/munged.log)"
    wait_until 10 sh -c 'munge -n | unmunge' || die "munged does not answer"
    cp /run/munge/munged.pid "$RUN/munged.pid"
}

node_ready() {
    case $(sinfo -h -n "$NODE" -o %T 2>/dev/null) in idle|mixed|allocated) return 0 ;; esac
    return 1
}

up() {
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts slurmctld/slurmd)"
    mkdir -p "$ROOT/state" "$ROOT/spool/$NODE" "$RUN" "$LOG"
    chmod 755 "$ROOT" "$LOG"
    install_packages
    if running "$RUN/slurmctld.pid" slurmctld && running "$RUN/slurmd.pid" slurmd && node_ready \
            && { [ "$ACCOUNTING" != 1 ] || running "$RUN/slurmdbd.pid" slurmdbd; }; then
        say "already up"
        echo "SLURM_CONF=$CONF"
        return
    fi
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        listening "$port" && die "port $port is in use (another Slurm?); set ASYNCVID_SLURM_PORTS"
    done
    getent hosts "$NODE" >/dev/null || die "host name $NODE does not resolve; add it to /etc/hosts"
    write_config
    start_munge
    start_accounting
    slurmctld -f "$CONF" || die "slurmctld did not start: $(last_log_line "$LOG/slurmctld.log")"
    wait_until 20 sh -c 'scontrol ping | grep -q "is UP"' \
        || die "slurmctld does not answer: $(last_log_line "$LOG/slurmctld.log")"
    slurmd -f "$CONF" || die "slurmd did not start: $(last_log_line "$LOG/slurmd.log")"
    if ! wait_until 20 node_ready; then
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true  # left down by an earlier run
        wait_until 10 node_ready || die "node $NODE is not idle: $(sinfo -h -n "$NODE" -o '%T %E' 2>/dev/null)"
    fi
    say "up: node $NODE, $CPUS CPUs, partition debug"
    echo "SLURM_CONF=$CONF"
}

stop() {  # stop <pidfile> <comm>
    running "$1" "$2" || { rm -f "$1"; return 0; }
    local pid
    pid=$(tr -dc '0-9' < "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    rm -f "$1"
}

down() {
    if running "$RUN/slurmctld.pid" slurmctld; then
        # cancel jobs while the controller is up, so no slurmstepd outlives slurmd
        scancel --full --quiet --partition=debug 2>/dev/null || true
        wait_until 20 sh -c '[ -z "$(squeue -h -o %i)" ]' || say "jobs still listed after scancel"
    fi
    stop "$RUN/slurmd.pid" slurmd
    stop "$RUN/slurmctld.pid" slurmctld
    stop "$RUN/slurmdbd.pid" slurmdbd
    stop "$RUN/mariadb.pid" mariadbd
    stop "$RUN/munged.pid" munged
    say "down"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) running "$RUN/slurmctld.pid" slurmctld && node_ready && echo "up" || { echo "down"; exit 1; } ;;
    *) die "usage: $0 up|down|status" ;;
esac
