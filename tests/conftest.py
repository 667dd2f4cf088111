"""Shared test settings: never reach the network, keep runs small and quiet."""

import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 2k-row synthetic world shared by tests that only read it."""
    from cocu.curation.inputs.synthetic import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    record = generate_world(
        out, WorldConfig(train=2000, teacher=400, val=40, shard_size=500), workers=1, progress=False
    )
    return out, record


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads run tiny ops ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local 2-CPU Ray cluster for the whole session (starting one costs seconds); skipped without Ray."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 * 1024)
    yield ray
    ray.shutdown()
