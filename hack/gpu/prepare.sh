#!/usr/bin/env bash
# Prepares, here, what the GPU checks carry to a lent device machine
# (bench/README.md, "On a GPU machine", says which calls carry what).
#
# That machine reaches no package registry and runs its own Python 3.12 (with
# CUDA 13's libraries, numpy, onnx, uvloop, aiohttp, prometheus-client, pytest);
# one call carries at most 64 MiB. onnxruntime-gpu's wheel alone is about 250 MB,
# so it travels in parts over several calls while the machine stays warm.
#
# PY_VERSION (default 3.12, the image's) picks the wheels' Python.
#
# Writes, under .whl/ (git-ignored):
#   deps/           cp312 wheels of what the server and its tests need beyond that image
#   perf_analyzer/  bin/perf_analyzer with lib/libcudart.so.12 and lib/libb64.so.0d
#   ort-1 .. ort-N/ onnxruntime-gpu's wheel in parts of at most 60 MiB (ort-1 also has its file name)
set -euo pipefail
cd "$(dirname "$0")/../.."
ORT_GPU="${ORT_GPU:-onnxruntime-gpu==1.31.1}"  # the newest on PyPI for CUDA 13, which that image has
PY=.venv/bin/python
DEST=.whl
[ -x "$PY" ] || { echo "run make venv first" >&2; exit 1; }

pip_download() {  # cp312 manylinux wheels, no dependencies: exactly what is named
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$@"
}
pinned() {  # NAME==VERSION as installed in the project venv, so both sides run the same code
  for name in "$@"; do echo "$name==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"; done
}

rm -rf "$DEST"
mkdir -p "$DEST/deps" "$DEST/perf_analyzer/bin" "$DEST/perf_analyzer/lib" "$DEST/ort"
# shellcheck disable=SC2046
pip_download "$DEST/deps" $(pinned grpcio grpcio-health-checking grpcio-reflection protobuf tritonclient \
  python-rapidjson urllib3)

PA_HOME="$(bash bench/install_perf_analyzer.sh | xargs dirname | xargs dirname)"
cp "$PA_HOME/bin/perf_analyzer" "$DEST/perf_analyzer/bin/"
cp "$PA_HOME"/lib/libcudart.so.12* "$DEST/perf_analyzer/lib/"
cp -L "$(ldconfig -p | awk '/libb64\.so\.0d/ {print $NF; exit}')" "$DEST/perf_analyzer/lib/libb64.so.0d"

pip_download "$DEST/ort" "$ORT_GPU"
wheel="$(cd "$DEST/ort" && ls ./*.whl)"
(cd "$DEST/ort" && split -b 60M -d -a 1 "$wheel" part- && sha256sum "$wheel" > SHA256SUMS && rm "$wheel")
n=0
for part in "$DEST"/ort/part-*; do
  n=$((n + 1)); mkdir -p "$DEST/ort-$n"; mv "$part" "$DEST/ort-$n/"
done
mv "$DEST/ort/SHA256SUMS" "$DEST/ort-1/"
rmdir "$DEST/ort"
du -sh "$DEST"/*
echo "carry .whl/deps and .whl/perf_analyzer in one call, then .whl/ort-1 .. .whl/ort-$n (bench/README.md)"
