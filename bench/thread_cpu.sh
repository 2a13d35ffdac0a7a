#!/usr/bin/env bash
# Where a server's CPU goes per inference: per-thread CPU (from /proc/PID/task/*/stat)
# while perf_analyzer loads it, divided by the throughput perf_analyzer measured.
# Both kubeinfer-server and the echo ceiling (bench/echo_server.py) can be measured,
# so their threads compare directly. Used for bench/RESULTS.md ("Why concurrency 64 ...").
#
# Usage: bench/thread_cpu.sh MODEL.onnx CONCURRENCY [server|echo] [extra kubeinfer-server flags...]
#   env BATCH (rows per request, default 1), STREAM=--streaming, ASYNC=-a (perf_analyzer's async
#   mode: at concurrency 1 it also keeps one request in flight), EVENT_LOOP (echo only, default auto)
# Needs `make venv perf-analyzer`. Loopback only; everything it starts is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; CONC=$2; TARGET=${3:-server}; shift $(( $# < 3 ? $# : 3 ))
PY=.venv/bin/python
read -r PORT MPORT < <($PY -c 'from devkit.ports import free_port; print(free_port(), free_port())')
WORK=$(mktemp -d)
cleanup() { [ -n "${GROUP:-}" ] && kill -- -"$GROUP" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
if [ "$TARGET" = echo ]; then
  setsid $PY bench/echo_server.py --model "m=$MODEL" --port "$PORT" --event-loop "${EVENT_LOOP:-auto}" > "$WORK/server.log" 2>&1 &
  GROUP=$!
  for _ in $(seq 300); do grep -q READY "$WORK/server.log" && break; sleep 0.1; done
  PID=$(pgrep -P "$GROUP" -f multiprocessing | tail -1)
else
  setsid .venv/bin/kubeinfer-server serve --model "m=$MODEL" --host 127.0.0.1 --grpc-port "$PORT" \
    --http-port 0 --metrics-port "$MPORT" "$@" > "$WORK/server.log" 2>&1 &
  GROUP=$!; PID=$GROUP
  for _ in $(seq 300); do curl -sf "localhost:$MPORT/readyz" > /dev/null && break; sleep 0.1; done
fi
bench/perf_analyzer -m m -i grpc -u "127.0.0.1:$PORT" --concurrency-range "$CONC" -b "${BATCH:-1}" \
  --measurement-mode time_windows -p 2000 -s 10000 -r 3 ${STREAM:-} ${ASYNC:-} > "$WORK/pa.log" 2>&1 &
PA=$!
snap() { for t in /proc/$PID/task/*; do echo "$(basename "$t") $(tr ' ' _ < "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done; }
sleep 2; snap > "$WORK/t0"; sleep 3; snap > "$WORK/t1"
[ "$TARGET" = echo ] || curl -s "localhost:$MPORT/metrics" > "$WORK/metrics" || true
wait $PA || { cat "$WORK/pa.log"; exit 1; }
TP=$(awk '/Throughput:/ {v=$2} END {print v}' "$WORK/pa.log")
$PY - "$WORK" "$TP" "$(getconf CLK_TCK)" <<'PY'
import pathlib, re, sys
work, tp, hz = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
def load(name):
    return {f[0]: (f[1], int(f[2])) for f in (l.split() for l in (work / name).read_text().splitlines())}
t0, t1 = load("t0"), load("t1")
print(f"{tp:.0f} inf/s")
total = 0.0
for tid, (comm, ticks) in sorted(t1.items()):
    cpu = (ticks - t0.get(tid, (comm, 0))[1]) / hz / 3  # cores busy over the 3 s between snapshots
    total += cpu
    if cpu > 0.005:
        print(f"  thread {tid:>8} {comm:18s} {cpu * 100:5.1f}%  {cpu / tp * 1e6:6.1f} us/inf")
print(f"  server total {total * 100:.1f}%  {total / tp * 1e6:.1f} us/inf")
metrics = work / "metrics"
if metrics.exists():
    text = metrics.read_text()
    s = re.search(r"^kubeinfer_batch_size_sum\S* (\S+)", text, re.M)
    c = re.search(r"^kubeinfer_batch_size_count\S* (\S+)", text, re.M)
    if s and c and float(c[1]):
        print(f"  average batch {float(s[1]) / float(c[1]):.1f} rows")
PY
