"""Every error cocu raises about its inputs is a `CocuError` whose message is one line, also from a worker process."""

import pickle

import pytest
from torch.utils.data import DataLoader, Dataset

from cocu.curation.bank.layout import BankError
from cocu.curation.core.errors import CocuError, VocabularyError
from cocu.curation.core.shards import ShardError
from cocu.curation.inputs.url_lists import IngestError
from cocu.evaluation.datasets import DatasetError
from cocu.training.checkpoint import CheckpointError


class _BadImage(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DatasetError(f"/data/img{index}.png: not an image (cannot identify image file)")


@pytest.mark.parametrize("error", [ShardError, VocabularyError, BankError, IngestError, DatasetError, CheckpointError])
def test_project_errors_share_the_base_and_still_read_as_value_errors(error):
    assert issubclass(error, CocuError) and issubclass(error, ValueError)


def test_a_message_is_folded_into_one_line_and_survives_pickling():
    err = CocuError("lists.tsv: row 3: bad URL\n  'ftp://x'")
    assert str(err) == "lists.tsv: row 3: bad URL 'ftp://x'"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    shard = pickle.loads(pickle.dumps(ShardError("a.parquet", "empty caption", row=7)))
    assert (type(shard), str(shard), shard.row) == (ShardError, "a.parquet: row 7: empty caption", 7)


def test_an_error_from_a_dataloader_worker_keeps_only_its_own_message():
    with pytest.raises(DatasetError) as caught:
        next(iter(DataLoader(_BadImage(), num_workers=1, batch_size=None)))
    assert str(caught.value) == "/data/img0.png: not an image (cannot identify image file)"
