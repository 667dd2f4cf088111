"""`make benchmark`: the CoCu experiment end to end on the embedded synthetic world.

For now it draws the world and summarises it; the later stages join as they land.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cocu.evaluation.synthetic import WorldConfig, generate_world

PRESETS = {
    "quick": WorldConfig(train=2000, teacher=2000, val=50, shard_size=1000),
    "default": WorldConfig(train=20000, teacher=20000, val=300, shard_size=2500),
}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", type=Path, default=Path("benchmark"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    record = generate_world(args.out / "world", PRESETS[args.preset], workers=args.workers)
    report = args.out / "report.md"
    omission = record["omission"]
    lines = [
        "# cocu benchmark",
        "",
        f"Preset `{args.preset}`. Every number below was measured in this run.",
        "",
        "## Synthetic world",
        "",
        "| classes | things | stuff | train | teacher | val | present / image | named / image | omitted share (target) | synth pairs/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {len(record['classes'])} | {len(record['things'])} | {len(record['stuff'])} | {record['counts']['train']} | "
        f"{record['counts']['teacher']} | {record['counts']['val']} | {omission['present_per_image']} | {omission['named_per_image']} | "
        f"{omission['measured_train']} ({omission['target']}) | {record['generation']['pairs_per_second']} |",
        "",
        "```json",
        json.dumps(record["config"], indent=2),
        "```",
    ]
    report.write_text("\n".join(lines) + "\n")
    print(f"report: {report.resolve()}")
    return report


if __name__ == "__main__":
    main()
