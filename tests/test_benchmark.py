"""`make benchmark` at a tiny size: every stage runs through the user's commands and the report is complete."""
import re

from cocu.evaluation.benchmark import main


def test_tiny_benchmark_writes_every_section_and_resumes(tmp_path, capsys):
    out = tmp_path / "bench"
    report = main(["--preset", "quick", "--out", str(out), "--runs", "caption", "cocu-cluster", "--in-process"])
    text = report.read_text()
    for heading in ("## Findings", "## Segmentation", "## Curation quality", "## Teacher CLIP", "## Throughput",
                    "## Per-class IoU", "## Settings"):
        assert heading in text, heading
    for figure in ("per_class_iou.png", "curation.png", "examples.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
        assert f"figures/{figure}" in text
    segmentation = text.split("## Segmentation")[1].split("##")[0]
    assert re.search(r"\| caption \(GroupViT baseline\) \| `caption` \| \*\*\d+\.\d\*\*", segmentation)
    assert "`cocu-cluster`" in segmentation and "`oracle`" not in segmentation
    curation = text.split("## Curation quality")[1].split("## Teacher")[0]
    for row in ("CoCu (expansion + ranking)", "neighbours' captions, most frequent", "teacher CLIP over the whole vocabulary",
                "cocu-top (released top-3)", "cocu-cluster (cluster-guided)", "oracle (true concepts)"):
        assert f"| {row} |" in curation, row
    throughput = text.split("## Throughput")[1].split("##")[0]
    for stage in ("synth", "teacher", "bank", "enrich", "quality", "train-caption", "eval-caption", "train-cocu-cluster"):
        assert f"| {stage} |" in throughput, stage
    assert "- `cocu-cluster` scores" in text
    capsys.readouterr()

    again = main(["--preset", "quick", "--out", str(out), "--runs", "caption", "cocu-cluster", "--in-process"])
    assert again == report
    printed = capsys.readouterr().out
    assert printed.count("done in an earlier run") == 9  # synth, teacher, bank, enrich, quality, 2 x (train, eval)
    assert "report:" in printed
