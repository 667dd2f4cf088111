"""What ``cocu-curate status`` says of a folder: a bank's completeness, and each stage's finished shards and counts.

Everything comes from files the stages write (the bank manifest, the per-shard manifests), by the names that
``bank.layout`` and ``core.shards`` define, so nothing runs and nothing is changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from cocu.curation.bank.layout import MANIFEST, PARTS
from cocu.curation.core.shards import MANIFEST_SUFFIX


def status_lines(out: Path) -> list[str]:
    """One line for the bank (when ``out`` is one) and one per stage whose shard manifests are in ``out``."""
    lines = []
    folders = [out / PARTS, out] if (out / PARTS).is_dir() else [out]
    bank = out / MANIFEST
    if bank.is_file():
        manifest = json.loads(bank.read_text())
        lines.append(
            f"bank {out}: complete; {manifest['rows']} images, {manifest['vocabulary']['size']} concepts, "
            f"model {manifest['model']['name']} / {manifest['model']['pretrained']}, "
            f"index {manifest['index']['factory']}"
        )
    elif (out / PARTS).is_dir():
        lines.append(f"bank {out}: incomplete (no {MANIFEST} yet)")
    for folder in folders:
        lines += _stage_lines(folder)
    if len(lines) == 0:
        lines.append(f"{out}: nothing done yet")
    return lines


def _stage_lines(folder: Path) -> list[str]:
    stages: dict[str, dict] = {}
    for path in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
        record = json.loads(path.read_text())
        entry = stages.setdefault(record.get("stage", "?"), {"shards": 0, "seconds": 0.0, "counts": {}})
        entry["shards"] += 1
        entry["seconds"] += record.get("seconds", 0.0)
        for name, value in record.get("counts", {}).items():
            entry["counts"][name] = entry["counts"].get(name, 0) + value
    lines = []
    for stage, entry in stages.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(entry["counts"].items()))
        rate = entry["counts"].get("images", 0) / entry["seconds"] if entry["seconds"] else 0.0
        lines.append(f"{stage} ({folder}): {entry['shards']} shard(s) done; {counts}; {rate:.0f} images/s per worker")
    return lines
