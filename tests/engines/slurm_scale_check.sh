#!/bin/bash
# `make scale-check`: docs/scale.md's sbatch chain (embed array -> --finalize -> enrich array, CPU resource lines) on a
# one-node SLURM cluster made under a temporary folder, compared byte for byte with one plain run of the same world.
# Installs slurm-wlm and munge (apt, as root) when missing. Every daemon it starts (munged, slurmctld, slurmd) is
# stopped by its pid at the end, whatever happened; the folder is removed unless KEEP=1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
CURATE="$PY -m cocu.cli.curate"
started=$(date +%s)
say() { echo "scale-check: $*"; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" != 0 ]; then say "slurm-wlm and munge are missing and this is not root: cannot install them"; exit 1; fi
    say "installing slurm-wlm and munge (apt)"
    if ! (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            slurm-wlm munge) >/tmp/cocu-scale-check-apt.log 2>&1; then
        say "apt-get install slurm-wlm munge failed: see /tmp/cocu-scale-check-apt.log"; exit 1
    fi
fi
if [ "$(id -u)" != 0 ]; then say "the daemons run as root here (SlurmUser=root); run as root"; exit 1; fi

ROOT=$(mktemp -d /tmp/cocu-slurm.XXXXXX)
PIDS=()
stop() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$ROOT"; else say "kept $ROOT"; fi
}
trap stop EXIT
mkdir -p "$ROOT"/{munge,state,spool,logs,work}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# munge: its own key, socket and files under ROOT (-f: the folders are not the packaged ones)
dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$ROOT/munge/munge.key"
SOCKET=$ROOT/munge/munge.socket
munged -f --key-file="$ROOT/munge/munge.key" --socket="$SOCKET" --pid-file="$ROOT/munge/munged.pid" \
    --log-file="$ROOT/munge/munged.log" --seed-file="$ROOT/munge/munged.seed"
for _ in $(seq 50); do [ -s "$ROOT/munge/munged.pid" ] && break; sleep 0.1; done
PIDS+=("$(cat "$ROOT/munge/munged.pid")")

HOST=$(hostname -s)
CPUS=$(nproc)
cat >"$ROOT/slurm.conf" <<EOF
ClusterName=cocucheck
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd.pid
SlurmctldLogFile=$ROOT/logs/slurmctld.log
SlurmdLogFile=$ROOT/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=check Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$ROOT/slurm.conf
slurmctld -D -f "$SLURM_CONF" >"$ROOT/logs/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$ROOT/logs/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do sinfo -h -o %T 2>/dev/null | grep -qE '^idle' && break; sleep 0.3; done
if ! sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then
    say "the one-node cluster did not come up:"; tail -5 "$ROOT"/logs/*.log "$ROOT"/logs/*.out; exit 1
fi
say "one-node cluster up: $(sinfo -h -o '%P %D node(s) %c cpus %T')"

# the world, a tiny CLIP and the plain run to compare with
cd "$ROOT/work"
PYTHONPATH=$HERE/tests "$PY" - <<'EOF'
from pathlib import Path
from test_curation import save_tiny_clip
from cocu.curation.inputs.synthetic import WorldConfig, generate_world
generate_world(Path("world"), WorldConfig(train=120, teacher=0, val=0, shard_size=10), progress=False)
save_tiny_clip(Path("ckpt"), seed=3)
EOF
BANK="--model cocu-test-tiny --pretrained $ROOT/work/ckpt/tiny.pt --batch-size 32 --decode-workers 0 --min-count 2"
$CURATE build-bank --shards "$ROOT/work/world/train" --out "$ROOT/work/bank-plain" $BANK >logs-plain.txt 2>&1
$CURATE enrich --bank "$ROOT/work/bank-plain" --shards "$ROOT/work/world/train" --out "$ROOT/work/out-plain" \
    --batch-size 16 >>logs-plain.txt 2>&1
plain=$(date +%s)

# docs/scale.md's chain, with CPU resource lines instead of GPUs
cat >curate.sbatch <<EOF
#!/bin/bash
#SBATCH --job-name=cocu-embed
#SBATCH --array=0-4:2
#SBATCH --cpus-per-task=1
#SBATCH --output=$ROOT/logs/embed-%A_%a.out
set -euo pipefail
$CURATE build-bank --shards $ROOT/work/world/train $BANK --out $ROOT/work/bank --workers 1
EOF
embed=$(sbatch --parsable curate.sbatch)
finalize=$(sbatch --parsable --dependency=afterok:$embed --kill-on-invalid-dep=yes --cpus-per-task=$CPUS \
    --output="$ROOT/logs/finalize-%j.out" --wrap \
    "$CURATE build-bank --shards $ROOT/work/world/train $BANK --out $ROOT/work/bank --finalize")
enrich=$(sbatch --parsable --dependency=afterok:$finalize --kill-on-invalid-dep=yes --array=1,3,5 --cpus-per-task=1 \
    --output="$ROOT/logs/enrich-%A_%a.out" --wrap \
    "$CURATE enrich --bank $ROOT/work/bank --shards $ROOT/work/world/train --out $ROOT/work/out --batch-size 16 --workers 1")
say "submitted: embed array $embed (--array=0-4:2), finalize $finalize, enrich array $enrich (--array=1,3,5)"
deadline=$(( $(date +%s) + ${TIMEOUT:-900} ))
while [ -n "$(squeue -h -o %i 2>/dev/null)" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then say "jobs still queued after ${TIMEOUT:-900}s:"; squeue; exit 1; fi
    sleep 2
done
chain=$(date +%s)
for log in "$ROOT"/logs/*-*.out; do echo "--- $(basename "$log"): $(grep -E '^(embed|bank|enrich|error)' "$log" | tail -2 | tr '\n' ' ')"; done

"$PY" - "$ROOT/work" <<'EOF'
import sys
from pathlib import Path
work = Path(sys.argv[1])
names = ["vocabulary.json", "concepts.parquet", "images.parquet", "embeddings.npy", "index.faiss", "manifest.json"]
bank, plain = work / "bank", work / "bank-plain"
assert (bank / "manifest.json").exists(), "the chain made no bank (see the job logs above)"
names += [f"parts/{p.name}" for p in sorted((plain / "parts").glob("*.parquet"))]
for name in names:
    assert (bank / name).read_bytes() == (plain / name).read_bytes(), f"bank {name} differs"
shards = sorted(p.name for p in (work / "out-plain").glob("*.parquet"))
assert sorted(p.name for p in (work / "out").glob("*.parquet")) == shards, "enrich shards differ in names"
for name in shards:
    assert (work / "out" / name).read_bytes() == (work / "out-plain" / name).read_bytes(), f"{name} differs"
left = [p.name for p in work.rglob(".*.tmp")]
assert not left, f"temporaries left: {left}"
print(f"scale-check: bank ({len(names)} files) and {len(shards)} curated shards byte-identical to the plain run")
EOF
say "plain run $((plain - started))s (with set-up), sbatch chain $((chain - plain))s, total $(( $(date +%s) - started ))s"
