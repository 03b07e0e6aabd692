#!/usr/bin/env bash
# A real one-node SLURM on this machine, for `make test-cluster` (test infrastructure: rfsweep itself never needs
# SLURM). Debian's slurm-wlm, slurmdbd, munge and MariaDB, run as root without systemd:
#   scripts/slurm_local.sh up      install what is missing, write the configs, start the daemons, wait until ready,
#                                  cancel every job left in the queue (the tests start with an empty one)
#   scripts/slurm_local.sh down    stop the daemons this script started (by their pid files)
#   scripts/slurm_local.sh status  what runs
# Safe to run twice: `up` starts only what is not running and rewrites only configs it wrote itself (a slurm.conf
# without its marker line is never touched). Accounting (slurmdbd on its own MariaDB) is there because submitit
# reads job states with `sacct`: without it a cancelled job looks pending for ever.
set -euo pipefail

STATE=${RFSWEEP_SLURM_STATE:-/var/tmp/rfsweep-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by rfsweep scripts/slurm_local.sh"
DB_PORT=${RFSWEEP_SLURM_DB_PORT:-3317}
DBD_PORT=6829
CLUSTER=rfsweep
# how long a requeued job waits before it may start again (SLURM holds it for cred_expire + 1 s; default 120 s)
CRED_EXPIRE=${RFSWEEP_SLURM_REQUEUE_HOLD_S:-10}
HOST=$(hostname -s)

log() { echo "slurm_local: $*" >&2; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurm-wlm)
  command -v slurmdbd >/dev/null || need+=(slurmdbd)
  command -v munged >/dev/null || need+=(munge)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# the configs' digest; absent files count as empty (a fresh machine has none: `cat` failing must not end the script)
configs_digest() { { cat "$CONF" "$DBD_CONF" 2>/dev/null || true; } | md5sum; }

ours_or_absent() { [[ ! -e $1 ]] || head -n1 "$1" | grep -qF "$MARK"; }

write_configs() {
  mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm
  for f in "$CONF" "$DBD_CONF"; do
    ours_or_absent "$f" || { log "error: $f exists and was not written by this script; not touching it"; exit 2; }
  done
  # the node as slurmd sees it (CPUs, sockets, cores, memory), less 1 GiB for the daemons
  local node
  node=$(slurmd -C | head -n1 | sed -E 's/UpTime=.*//')
  local mem=${node##*RealMemory=}
  mem=${mem%% *}
  node=$(echo "$node" | sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem - 1024))/")
  cat >"$CONF" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=30
InactiveLimit=0
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
$node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=rfsweep
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBD_CONF"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$STATE/munged.pid"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  log "error: munged does not answer"; exit 1
}

sql() { mariadb --protocol=socket -S "$STATE/mysql.sock" -uroot "$@"; }

start_db() {
  alive "$STATE/mariadb.pid" && return
  if [[ ! -d $STATE/mysql/mysql ]]; then
    mariadb-install-db --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
      --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
  fi
  mariadbd --user=root --datadir="$STATE/mysql" --socket="$STATE/mysql.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE/mariadb.pid" --log-error="$STATE/log/mariadb.log" \
    --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
  for _ in $(seq 100); do sql -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'rfsweep';
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'rfsweep';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_daemons() {
  alive "$STATE/slurmdbd.pid" || slurmdbd
  for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  alive "$STATE/slurmctld.pid" || slurmctld
  alive "$STATE/slurmd.pid" || slurmd
  for _ in $(seq 150); do
    [[ $(sinfo -h -n "$HOST" -o %T 2>/dev/null) == idle* || $(sinfo -h -n "$HOST" -o %T 2>/dev/null) == mix* \
       || $(sinfo -h -n "$HOST" -o %T 2>/dev/null) == alloc* ]] && break
    sleep 0.2
  done
  local state
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  if [[ $state == down* || $state == drain* ]]; then scontrol update nodename="$HOST" state=resume || true; fi
  sacct -n -X -S now >/dev/null || { log "error: sacct does not answer"; exit 1; }
}

up() {
  install
  mkdir -p "$STATE"
  local before
  before=$(configs_digest)
  write_configs
  if [[ $before != "$(configs_digest)" ]] && alive "$STATE/slurmctld.pid"; then
    log "config changed: restarting the daemons"
    stop slurmd; stop slurmctld; stop slurmdbd
  fi
  start_munge
  start_db
  start_daemons
  purge_queue
  log "up: $(sinfo -h -o '%P %D %T %c CPUs %m MB') (state and logs in $STATE)"
}

purge_queue() {  # jobs left by an earlier session come back with slurmctld's state: the tests start with none
  local jobs
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [[ -z ${jobs// } ]] && return
  log "cancelling jobs left in the queue: $jobs"
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null || true
  for _ in $(seq 150); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && return; sleep 0.2; done
  log "warning: jobs still in the queue after 30 s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
}

stop() {  # stop one daemon by its pid file, wait for it to exit
  local pidf=$STATE/$1.pid
  if alive "$pidf"; then
    local pid
    pid=$(cat "$pidf")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidf"
}

down() {
  for d in slurmd slurmctld slurmdbd mariadb munged; do stop "$d"; done
  log "down"
}

status() {
  for d in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$STATE/$d.pid"; then echo "$d: running (pid $(cat "$STATE/$d.pid"))"; else echo "$d: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
