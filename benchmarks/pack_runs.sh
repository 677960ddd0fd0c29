#!/usr/bin/env bash
# Pack benchmark out dirs' run records (rounds, summaries, configs, tables; no weights, caches
# or exports) into one archive a later checkout can unpack and rebuild its tables from with
# `time_to_accuracy.py ... --report-only`, reusing the fixed runs instead of training them
# again. Linked runs (an out dir that links another's fixed runs) are stored as their files.
#
#   bash benchmarks/pack_runs.sh benchmarks/tta23-runs.tar.gz tw1200-s0 ema-a0.1-30-s0 ...
#   tar -xzf benchmarks/tta23-runs.tar.gz -C benchmarks/results      # to unpack
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/pack_runs.sh ARCHIVE.tar.gz OUT_DIR... (dirs under benchmarks/results)" >&2
    exit 2
fi
archive=$(realpath -m "$1")
shift
cd "$(dirname "$0")/results"
for d in "$@"; do
    if [ ! -d "$d" ]; then
        echo "pack_runs: benchmarks/results/$d: no such out dir" >&2
        exit 2
    fi
done
list=$(mktemp)
trap 'rm -f "$list"' EXIT
find -L "$@" -type f \( -name rounds.csv -o -name rounds.jsonl -o -name summary.json \
    -o -name config.toml -o -name table.md -o -name 'results.csv' -o -name 'results.json' \) \
    -not -path '*/export/*' | sort >"$list"
tar -czhf "$archive" -T "$list"
echo "$(wc -l <"$list") files, $(du -h "$archive" | cut -f1): $archive"
