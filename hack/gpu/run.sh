#!/usr/bin/env bash
# Runs, on a lent GPU machine, the checks issue 2 names for a GPU: the server tests
# with onnxruntime-gpu (the CUDA provider test among them), the benchmark with
# --providers cuda,cpu and session.run against IO binding (bench/iobinding_check.py);
# then the CPU benchmark on that machine's cores, for comparison with the 2-core
# figures. Everything it prints goes to $OUT/run.log, each step's own output to its
# own file under $OUT, so a run cut short still brings back what it did.
#
# Needs what hack/gpu/prepare.sh wrote under .whl/, carried as bench/README.md says.
# STEPS (default "tests gpu-bench iobinding cpu-bench") picks steps; WINDOW_MS the perf_analyzer window.
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?run on the device machine, where OUT is set}"
STEPS="${STEPS:-tests gpu-bench iobinding cpu-bench}"
WINDOW_MS="${WINDOW_MS:-1000}"
exec > >(tee -a "$OUT/run.log") 2>&1
step() { echo "=== $(date +%T) $*"; }

step "machine"
nvidia-smi -L || true
nproc; python3 --version

step "onnxruntime-gpu: reassemble and check the wheel"
mkdir -p /tmp/ort
wheel="$(awk '{print $2}' .whl/ort-1/SHA256SUMS | sed 's|^\./||')"
cat .whl/ort-*/part-* > "/tmp/ort/$wheel"
(cd /tmp/ort && sha256sum -c "$OLDPWD/.whl/ort-1/SHA256SUMS") || { echo "parts missing or damaged"; exit 1; }

step "venv over the image's packages, with the carried wheels and this project"
# The image's python3 is itself a venv, whose packages --system-site-packages would not
# see: a .pth file puts them after the new venv's own (onnxruntime-gpu shadows the
# image's CPU onnxruntime that way).
site="$(python3 -c 'import site; print(site.getsitepackages()[0])')"
python3 -m venv --without-pip /tmp/kv
echo "$site" > "$(/tmp/kv/bin/python -c 'import site; print(site.getsitepackages()[0])')/image.pth"
pip_kv() { python3 -m pip --python /tmp/kv/bin/python install -q --no-index --no-deps "$@"; }
pip_kv .whl/deps/*.whl "/tmp/ort/$wheel" || exit 1
pip_kv --no-build-isolation . || exit 1
# The dev tooling (devkit: the test models) straight from the checkout, as `make venv`'s editable install.
echo "$PWD/hack" > "$(/tmp/kv/bin/python -c 'import site; print(site.getsitepackages()[0])')/kubeinfer-dev.pth"
# onnxruntime-gpu finds CUDA and cuDNN through the loader path; the image has them as nvidia-* wheels.
LD_LIBRARY_PATH="$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
export PERF_ANALYZER_HOME="$PWD/.whl/perf_analyzer"
/tmp/kv/bin/python - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
PY

for s in $STEPS; do
  case "$s" in
    tests)
      step "server tests (test_providers has the CUDA test) and unit tests"
      /tmp/kv/bin/python -m pytest -p no:cacheprovider -ra -q tests/server/test_batcher.py \
        tests/server/test_execution.py tests/server/test_metrics.py tests/server/test_tensors.py \
        tests/server/test_providers.py tests/server/test_protocol.py > "$OUT/tests.log" 2>&1
      echo "pytest rc=$?"; tail -15 "$OUT/tests.log" ;;
    gpu-bench)
      step "benchmark on the CUDA provider (mlp, cnn)"
      /tmp/kv/bin/python bench/server_bench.py --providers cuda,cpu --models mlp,cnn --window-ms "$WINDOW_MS" \
        --in-process-seconds 1 --markdown "$OUT/RESULTS-gpu.md" > "$OUT/bench-gpu.log" 2>&1
      echo "bench rc=$?"; grep -E "PASS|FAIL|INFO|NOTE|ERROR" "$OUT/bench-gpu.log" ;;
    iobinding)
      step "session.run against IO binding on the CUDA provider, in-process"
      (cd bench && /tmp/kv/bin/python iobinding_check.py --providers cuda,cpu --batches 1,8,32) \
        > "$OUT/iobinding.md" 2>&1
      echo "rc=$?"; cat "$OUT/iobinding.md" ;;
    cpu-bench)
      step "benchmark on this machine's CPU cores (mlp)"
      /tmp/kv/bin/python bench/server_bench.py --providers cpu --models mlp --window-ms "$WINDOW_MS" \
        --in-process-seconds 1 --markdown "$OUT/RESULTS-cpu.md" > "$OUT/bench-cpu.log" 2>&1
      echo "bench rc=$?"; grep -E "PASS|FAIL|INFO|NOTE|ERROR" "$OUT/bench-cpu.log" ;;
    *) echo "unknown step $s" ;;
  esac
done
step "done"
