"""The tables of benchmarks/gpu_check.sh, in markdown for benchmarks/RESULTS.md.

python benchmarks/gpu_summary.py WORK_DIR DEVICE ENV_TXT STATUS_TXT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from round_time import table  # noqa: E402

# ms/step measured on the GPU check machine's H200: random-init BERT-shaped encoders, 128
# tokens, AdamW; full fine-tuning, adapters in the top 2 layers, the same from cached
# activations (../shared/gpu-notes.md, "Ceiling figures", 2026-11-30)
CEILING_MS = {
    ("MiniLM-L6", 4, "fp32"): (12.2, 5.4, 4.5),
    ("MiniLM-L6", 64, "fp32"): (18.8, 7.5, 4.2),
    ("BERT-base", 4, "fp32"): (20.4, 6.8, 3.9),
    ("BERT-base", 64, "bf16"): (28.6, 9.5, 5.1),
}
VARIANTS = ("full fine-tuning", "adapters d=2", "adapters d=2 + cache")


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else None


def bench_table(work: Path) -> str:
    lines = [
        "| model | batch x tokens | precision | full FT | ceiling | ratio | adapters d=2 | "
        "ceiling | ratio | d=2 + cache | ceiling | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(work.glob("bench-*.json")):
        b = json.loads(f.read_text())
        model = "BERT-base" if "bert-base" in b["model"] else b["model"]
        precision = b["runtime"].rsplit(", ", 1)[-1] if "," in b["runtime"] else "fp32"
        ceiling = CEILING_MS.get((model, b["batch"], precision), (None,) * 3)
        cells = []
        for name, c in zip(VARIANTS, ceiling):
            ours = b["ms_per_step"].get(name)
            cells += [
                f"{ours:.1f}" if ours else "-",
                f"{c}" if c else "-",
                f"{ours / c:.2f}" if ours and c else "-",
            ]
        lines.append(
            f"| {model} | {b['batch']} x {b['tokens']} | {precision} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def main(work_dir: str, device: str, env_txt: str, status_txt: str) -> int:
    work = Path(work_dir)
    print(f"# GPU check ({device})\n")
    for path in (env_txt, status_txt):
        print("```\n" + (Path(path).read_text().strip() if Path(path).exists() else "") + "\n```\n")
    print("## Step benchmark, ms/step (median), beside the ceiling figures\n")
    print(bench_table(work))
    print("\n## Wall time per round, in-process engine (s)\n")
    names = (f"default-{device}.json", f"full-{device}.json", "cmp-a.json", "cmp-b.json")
    print(table([r for r in (_load(work / n) for n in names) if r]))
    for name, title in (
        ("compare.json", f"Same seed, CPU vs {device}: how close"),
        ("drift.json", f"One client round, dropout off, CPU vs {device}: float rounding alone"),
    ):
        r = _load(work / name)
        print(f"\n## {title}\n\n```\n{json.dumps(r, indent=1) if r else '(missing)'}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
