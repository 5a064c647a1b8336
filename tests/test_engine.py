"""Engine pieces that need no model: the data order and checkpoint bookkeeping."""
import pytest

from src.engine.sampler import StepBatchSampler
from src.runs import list_checkpoints, resolve_checkpoint


def test_data_order_is_a_function_of_the_step():
    full = StepBatchSampler(50, 4, seed=3)
    it = iter(full)
    first_30 = [next(it) for _ in range(30)]
    resumed = iter(StepBatchSampler(50, 4, seed=3, start_batch=17))
    assert [next(resumed) for _ in range(13)] == first_30[17:]
    # every epoch (12 batches of 4 out of 50) is a permutation without repeats, and epochs differ
    epoch0 = sum(first_30[:12], [])
    epoch1 = sum(first_30[12:24], [])
    assert len(set(epoch0)) == 48 and len(set(epoch1)) == 48 and epoch0 != epoch1
    assert StepBatchSampler(50, 4, seed=4).batch(0) != full.batch(0)


def test_processes_read_disjoint_shards():
    ranks = [StepBatchSampler(40, 5, seed=0, rank=r, world_size=2) for r in range(2)]
    for b in range(8):
        a, c = ranks[0].batch(b), ranks[1].batch(b)
        assert not set(a) & set(c)
    single = StepBatchSampler(40, 10, seed=0)
    assert sorted(ranks[0].batch(0) + ranks[1].batch(0)) == sorted(single.batch(0))


def test_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(7, 4, seed=0, world_size=2)


def test_latest_ignores_incomplete_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_000005", "step_000010", "step_000015.tmp", "step_000002.deleting"):
        (root / name).mkdir(parents=True)
    assert [p.name for p in list_checkpoints(root)] == ["step_000005", "step_000010"]
    assert resolve_checkpoint("latest", root).name == "step_000010"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(str(root / "step_000015.tmp"), root)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint("latest", tmp_path / "elsewhere")
