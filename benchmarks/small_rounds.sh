#!/bin/bash
# Small entries through the CLI, side by side in one run: `s5cmd cp` of the raw files, `amgmt upload all` with the
# small-entry lane, and without it (MGMT_SMALL_ENTRY_SIZE=0), alternating for ROUNDS rounds on fresh data sets of
# N x 64 KiB; each timed with /usr/bin/time (wall, user, sys, peak RSS of the whole process tree).
#
#   ENDPOINT=http://127.0.0.1:8000 BUCKET=b AWS_ACCESS_KEY_ID=.. AWS_SECRET_ACCESS_KEY=.. \
#     [S5CMD=benchmarks/.peers-venv/bin/s5cmd] [KINDS="s5cmd lane off"] [CONCURRENCY=16] \
#     benchmarks/small_rounds.sh N ROUNDS
set -euo pipefail
N=$1; ROUNDS=$2
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$HERE")
S5CMD=${S5CMD:-$HERE/.peers-venv/bin/s5cmd}; KINDS=${KINDS:-"s5cmd lane off"}; C=${CONCURRENCY:-16}
PY=${PYTHON:-$ROOT/.venv/bin/python}
for round in $(seq 1 "$ROUNDS"); do
  for kind in $KINDS; do
    run=$(mktemp -d); mkdir "$run/local"
    "$PY" -c "import os,sys; [open(os.path.join(sys.argv[1], f'IMG_{i:06d}.jpg'), 'wb').write(os.urandom(65536)) for i in range(int(sys.argv[2]))]" "$run/local" "$N"
    load0=$(cut -d' ' -f1 /proc/loadavg)
    if [ "$kind" = s5cmd ]; then
      /usr/bin/time -f "%e %U %S %M" -o "$run/time" "$S5CMD" --endpoint-url "$ENDPOINT" cp "$run/local/*" \
        "s3://$BUCKET/s5-$(basename "$run")/" > /dev/null
    else
      size=1MiB; [ "$kind" = off ] && size=0
      (cd "$ROOT" && MGMT_SMALL_ENTRY_SIZE=$size MGMT_ENDPOINT_URL=$ENDPOINT MGMT_BUCKET=$BUCKET \
        MGMT_LOCAL_DIR=$run/local HOME=$run MGMT_OBJECT_PREFIX=$(basename "$run") PYTHONPATH=$ROOT \
        /usr/bin/time -f "%e %U %S %M" -o "$run/time" "$PY" -m amgmt upload all --concurrency "$C" --no-progress -q)
    fi
    read -r wall user sys rss < "$run/time"
    echo "round=$round kind=$kind n=$N wall=$wall user=$user sys=$sys" \
      "cpu_ms_per_entry=$(echo "scale=2; 1000 * ($user + $sys) / $N" | bc)" \
      "entries_per_s=$(echo "scale=1; $N / $wall" | bc) peak_rss_kb=$rss load=$load0/$(cut -d' ' -f1 /proc/loadavg)"
    rm -rf "$run"
  done
done
