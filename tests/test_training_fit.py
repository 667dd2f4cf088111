"""`cocu-train fit` end to end on the synthetic world: every text mode, checkpoints, kill + resume, and DDP on CPU."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from testkit import TRAIN_CONFIG, fit_args

from cocu.cli.train import main
from cocu.training.checkpoint import load_groupvit
from cocu.training.model import GroupViT
from cocu.training.text import tokenize

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch):
    """`main(args)` runs in-process; LightningCLI warns when sys.argv holds other arguments (pytest's)."""
    monkeypatch.setattr(sys, "argv", ["cocu-train"])


@pytest.fixture(scope="module")
def curated(small_world, tmp_path_factory) -> tuple[Path, Path]:
    """The world's train shards with the curated columns `cocu-curate enrich` adds, filled from the truth sidecar
    (caption concepts = named, curated = present, best first, two clusters). Returns (shards folder, truth folder)."""
    world, _ = small_world
    out = tmp_path_factory.mktemp("curated")
    truth = {}
    for path in sorted((world / "truth" / "train").glob("*.parquet")):
        for row in pq.read_table(path, columns=["key", "present", "named"]).to_pylist():
            truth[row["key"]] = row
    rng = np.random.default_rng(0)
    for path in sorted((world / "train").glob("*.parquet")):
        table = pq.read_table(path)
        rows = [truth[k] for k in table.column("key").to_pylist()]
        scores = [sorted(rng.random(len(r["present"])).astype(np.float32).tolist(), reverse=True) for r in rows]
        columns = {
            "caption_concepts": pa.array([r["named"] for r in rows], pa.list_(pa.string())),
            "cocu_concepts": pa.array([r["present"] for r in rows], pa.list_(pa.string())),
            "cocu_scores": pa.array(scores, pa.list_(pa.float32())),
            "cocu_clusters": pa.array([[i % 2 for i in range(len(r["present"]))] for r in rows], pa.list_(pa.int32())),
            "cocu_error": pa.array([None] * len(rows), pa.string()),
        }
        for name, column in columns.items():
            table = table.append_column(name, column)
        pq.write_table(table, out / path.name)
    return out, world / "truth" / "train"


def _metrics(root: Path, version: int) -> list[dict[str, str]]:
    with open(root / "logs" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["caption", "cocu-top", "cocu-cluster", "oracle"])
def test_fit_each_text_mode_writes_a_loadable_checkpoint(curated, tmp_path, mode):
    shards, truth = curated
    extra = ["--data.truth", str(truth)] if mode == "oracle" else []
    main(fit_args(shards, tmp_path, "--data.text_mode", mode, "--trainer.max_steps", "3", *extra))

    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # plain data only: no pickled code
    assert ckpt["global_step"] == 3  # saved at the end although 3 is not a multiple of every_n_train_steps=2
    assert ckpt["groupvit_config"]["name"] == "groupvit-test"
    rows = _metrics(tmp_path, 0)
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(np.isfinite(float(r["train/loss"])) and float(r["train/multi_label"]) > 0 for r in rows)
    # learning rate: warm-up from warmup_lr to the peak, both scaled by global batch 16 / reference 16, then cosine
    assert [float(r["train/lr"]) for r in rows] == pytest.approx([1e-5, 1e-3, 5.5e-4], rel=1e-5)

    model, config = load_groupvit(last)
    assert isinstance(model, GroupViT) and not model.training
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items()}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    images = torch.randn(2, 3, 64, 64)
    feats = model.group_features(images)
    assert feats.attn.shape == (2, config.vision.num_groups, 8, 8)
    assert model.encode_text(tokenize(["a photo of a mug."], model.context_length)).shape == (1, config.embed_dim)


@pytest.mark.slow
def test_a_fresh_run_in_a_used_folder_replaces_last_ckpt(curated, tmp_path):
    shards, _ = curated
    main(fit_args(shards, tmp_path, "--trainer.max_steps", "3"))
    main(fit_args(shards, tmp_path, "--trainer.max_steps", "1"))  # a new run, not a resume
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1


def test_load_groupvit_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt: not a loadable checkpoint"):
        load_groupvit(bad)
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="bare.ckpt: holds no GroupViT config"):
        load_groupvit(tmp_path / "bare.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_groupvit(tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_kill_and_resume_continues_from_the_saved_step(curated, tmp_path, capsys):
    shards, _ = curated
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = fit_args(shards, tmp_path, "--data.text_mode", "cocu-top", "--trainer.max_steps", "100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cocu.cli.train", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not last.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a lost node
        proc.wait()
        proc.stderr.close()
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert saved >= 2 and saved % 2 == 0

    main(
        fit_args(
            shards,
            tmp_path,
            "--data.text_mode",
            "cocu-top",
            "--trainer.max_steps",
            str(saved + 3),
            "--ckpt_path",
            "last",
        )
    )
    assert f"fit: 3 steps this run (global step {saved + 3}), 48 samples" in capsys.readouterr().out
    resumed = _metrics(tmp_path, 1)
    assert [int(r["step"]) for r in resumed] == [saved, saved + 1, saved + 2]
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == saved + 3
    assert ckpt["lr_schedulers"][0]["last_epoch"] == saved + 3  # the schedule continued too


DDP_SCRIPT = textwrap.dedent('''
    """One global batch of 8 through GroupViTModule: once on 1 process, then with DDP on 2 CPU processes (gloo)."""
    import os, sys
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Dataset
    from cocu.training.module import GroupViTModule
    from cocu.training.text import tokenize

    OUT = sys.argv[1]
    ARCH = {"vision": {"gumbel": False}, "proj_num_layers": 1}  # deterministic; no BatchNorm (see the test)

    class Toy(Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.images = torch.randn(8, 3, 32, 32, generator=g)
            words = ["dog", "cat", "mug", "cup", "sky", "grass", "sand", "road"]
            self.text = tokenize([f"a photo of a {w} number {i}" for w in words for i in range(4)], 32).view(8, 4, 32)
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return {"image": self.images[i], "text": self.text[i]}

    class ToyData(L.LightningDataModule):
        def __init__(self, batch_size):
            super().__init__()
            self.batch_size, self.num_samples = batch_size, 8
        def train_dataloader(self):
            return DataLoader(Toy(), batch_size=self.batch_size, shuffle=False, drop_last=True)

    class Recorder(GroupViTModule):
        def on_before_optimizer_step(self, optimizer):
            grads = torch.cat([p.grad.flatten() for p in self.model.parameters()])
            if self.trainer.is_global_zero:
                self.grads = grads.clone()

    def run(devices, tag):
        L.seed_everything(0)
        module = Recorder(arch="groupvit-test", arch_overrides=ARCH, warmup_steps=0)
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.fit(module, datamodule=ToyData(8 // devices))
        if trainer.is_global_zero:
            torch.save({"loss": trainer.callback_metrics["train/loss"], "grads": module.grads,
                        "world": trainer.world_size}, os.path.join(OUT, tag + ".pt"))

    if __name__ == "__main__":
        if "LOCAL_RANK" not in os.environ:  # Lightning re-runs this script for rank 1 with LOCAL_RANK set
            run(1, "single")
        run(2, "ddp")
''')


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_equals_one_process(tmp_path):
    """The loss and the (DDP-averaged) gradients of 2 ranks x 4 samples equal 1 rank x 8 samples.

    The projector's BatchNorm is left out (proj_num_layers=1): on GPUs it is SyncBatchNorm, which PyTorch does not run
    on CPU, and per-rank batch statistics would differ from the single-process ones by design.
    """
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert (single["world"], ddp["world"]) == (1, 2)
    assert torch.allclose(ddp["loss"], single["loss"], atol=1e-5)
    # equal up to float32 summation order (a gather without gradients would miss the other rank's half)
    diff = ddp["grads"] - single["grads"]
    assert diff.norm() / single["grads"].norm() < 1e-4
    assert diff.abs().max() < 1e-4 * single["grads"].abs().max()


def test_verbs(capsys):
    """`clip` hands over to the teacher CLI; `fit` is the only Lightning verb."""
    with pytest.raises(SystemExit) as done:
        main(["clip", "--help"])
    assert done.value.code == 0 and "cocu-train clip" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["validate", "--config", TRAIN_CONFIG])
    assert done.value.code != 0 and "validate" in capsys.readouterr().err
