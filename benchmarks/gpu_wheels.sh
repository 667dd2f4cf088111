#!/usr/bin/env bash
# `make gpu-wheels`: the wheels the GPU machine lacks (Python 3.12, x86-64; its image has torch, lightning,
# pyarrow, timm, typer, transformers but no open_clip, faiss, ftfy, jsonargparse), downloaded from PyPI into .whl/
# at the versions this checkout's .venv runs, then the size of everything a device call carries (the tree that git
# sees plus .whl/) against its 64 MiB (exit 3 when over). `benchmarks/gpu_check.sh` installs them there with --no-index.
#   bash benchmarks/gpu_wheels.sh            # GPU_WHEELS_FAISS=0 leaves faiss-cpu (19 MB) out
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LIMIT=$((64 * 1024 * 1024))
names="open_clip_torch ftfy wcwidth jsonargparse docstring_parser typeshed_client"
[ "${GPU_WHEELS_FAISS:-1}" = 1 ] && names="$names faiss-cpu"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf .whl && mkdir .whl
for name in $names; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$name==$version"
done
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | grep -zv '^\.whl/' | xargs -0 du -cb 2>/dev/null \
  | grep total$ | awk '{s += $1} END {print s}')
ls -1 .whl
echo "wheels $((wheels / 1048576)) MiB + tree $((tree / 1048576)) MiB = $(((wheels + tree) / 1048576)) MiB of 64"
if [ $((wheels + tree)) -gt $LIMIT ]; then
  big=$(git ls-files -z | xargs -0 du -b | sort -rn | awk 'NR <= 3 {printf "%s (%d MiB) ", $2, $1 / 1048576}')
  echo "over the device's 64 MiB: the largest tracked files are $big; take them out of the working tree for the"
  echo "device call (they travel only as files on disk), or leave faiss out with GPU_WHEELS_FAISS=0"
  exit 3
fi
