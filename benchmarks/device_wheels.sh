#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that benchmarks/device_checks.sh installs on a GPU
# machine whose image lacks them (its Python 3.12 has torch, triton, transformers, tokenizers,
# pyarrow, pandas, fsspec, xxhash, accelerate; not datasets and the packages below). They land in
# .whl/ (ignored by git); a device call carries that folder.
#
#     bash benchmarks/device_wheels.sh [PYTHON_VERSION]     # default 3.12
#
# Pins: datasets and vaderSentiment as in pyproject.toml; dill and multiprocess at the newest
# versions datasets accepts; trl, liger-kernel and cut-cross-entropy at the versions the
# benchmarks were last measured with (README, benchmarks/KERNEL_NOTES.md).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
wheels=(
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 vaderSentiment==3.3.2
  trl==1.16.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1
)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
kept=$(printf '%s\n' "${wheels[@]}" | sed 's/==.*//; s/-/_/g')
for w in .whl/*.whl; do  # one version of each: two make the install on the device fail
  name=$(basename "$w" | cut -d- -f1)
  if ! grep -qix "$name" <<<"$kept"; then
    echo "removing $w: not one of the pinned wheels" >&2
    rm -f "$w"
  fi
done
for spec in "${wheels[@]}"; do
  name=$(sed 's/==.*//; s/-/_/g' <<<"$spec"); version=${spec#*==}
  found=$(find .whl -maxdepth 1 -iname "${name}-*.whl" | wc -l)
  if [ "$found" -ne 1 ] || ! find .whl -maxdepth 1 -iname "${name}-${version}-*.whl" | grep -q .; then
    echo "expected exactly one wheel of $spec in .whl/, found $found" >&2
    exit 1
  fi
done
du -ch .whl/*.whl | tail -1
ls .whl
