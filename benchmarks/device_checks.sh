#!/usr/bin/env bash
# The checks that need a CUDA machine, in one script: a session lent a GPU runs it in one or two
# calls instead of writing commands under the clock. Each step runs under its own time limit and
# writes its output to $OUT/<step>.log (the results folder of the device tool; ./bench_out
# elsewhere: at most 8 files come back from a call, and all steps write 8 with setup.log and
# summary.txt); a table of what ran, its exit status and seconds ends the output.
#
#     bash benchmarks/device_checks.sh [STEP ...]        # no STEP: all of them, in this order
#
# Steps (limit in seconds):
#   gpu-tests   (150) pytest -m gpu: the fused kernel against float64 at two shapes, and the
#                     training curve of --loss triton against --loss torch
#   kernel      (180) benchmarks/kernel.py: rcond's kernel beside torch, torch.compile, Liger and
#                     Cut Cross-Entropy at the three DESIGN shapes, and the masking sweep
#   tiles       (150) benchmarks/kernel_tiles.py at 16384x2048x128256: the shipped per-kernel
#                     tiles (the 1.61x-floor prediction), then 100 s of other configurations
#   train       (180) benchmarks/train_throughput.py: rcond train vs TRL SFTTrainer (small preset)
#   preprocess  (200) benchmarks/preprocess.py --repeats 3 --workers 8 (16 cores; target 0.8x;
#                     146 s on the 2-core CI machine)
#   sampling    (100) benchmarks/sampling.py on CUDA
#
# All steps together can exceed one call's 10 minutes; two calls that fit a 15-minute lease:
#     bash benchmarks/device_checks.sh gpu-tests kernel train        (timeout_s 560)
#     bash benchmarks/device_checks.sh tiles preprocess sampling     (timeout_s 500)
# Before the first call, here: `bash benchmarks/device_wheels.sh` (datasets, vaderSentiment, TRL,
# Liger, Cut Cross-Entropy as wheels for the device's Python) and carry `.whl` in each call.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"  # the device's python3 holds torch; PYTHON=... to run elsewhere

all=(gpu-tests kernel tiles train preprocess sampling)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${all[@]}")
for s in "${steps[@]}"; do
  if ! printf '%s\n' "${all[@]}" | grep -qx -- "$s"; then
    echo "unknown step '$s'; expected some of: ${all[*]}" >&2
    exit 2
  fi
done

# ---- set-up: carried wheels into /tmp/site, rcond itself editable (rcond.kernels maps to kernels/)
if ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no .whl/ here: datasets, TRL and the kernel peers must already be installed" >&2
fi
$py -m pip install -q --no-deps --no-build-isolation -e . >"$out/setup.log" 2>&1 \
  || { cat "$out/setup.log" >&2; echo "installing rcond failed" >&2; exit 1; }
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  echo "cpus: $(nproc)"
  $py - <<'EOF'
import importlib
for name in ("torch", "triton", "transformers", "tokenizers", "datasets", "pyarrow", "fsspec", "trl",
             "liger_kernel", "cut_cross_entropy", "vaderSentiment"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:  # a peer that is missing is reported, and its benchmark skips it
        print(f"{name} MISSING ({type(e).__name__}: {e})")
import torch
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  echo "rcond at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([ -z "$(git status --porcelain 2>/dev/null)" ] || echo ' (with uncommitted changes)')"
} | tee -a "$out/setup.log"

# ---- the steps
declare -A limit=([gpu-tests]=150 [kernel]=180 [tiles]=150 [train]=180 [preprocess]=200 [sampling]=100)
command_of() {
  case "$1" in
    gpu-tests)  echo "$py -m pytest -q -m gpu -p no:cacheprovider" ;;
    kernel)     echo "$py benchmarks/kernel.py" ;;
    tiles)      echo "$py benchmarks/kernel_tiles.py --shapes 16384x2048x128256 --budget 100" ;;
    train)      echo "$py benchmarks/train_throughput.py --device cuda" ;;
    preprocess) echo "$py benchmarks/preprocess.py --repeats 3 --workers 8" ;;
    sampling)   echo "$py benchmarks/sampling.py --device cuda" ;;
  esac
}
summary=()
for s in "${steps[@]}"; do
  cmd=$(command_of "$s")
  echo "=== $s (limit ${limit[$s]} s): $cmd"
  start=$SECONDS
  timeout --kill-after=10 "${limit[$s]}" bash -c "$cmd" 2>&1 | tee "$out/$s.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "=== $s ran past its ${limit[$s]} s limit" | tee -a "$out/$s.log"
  summary+=("$(printf '%-11s exit %3d  %4d s' "$s" "$rc" $((SECONDS - start)))")
done
echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
