"""StoryGPT-V against its release, without the release's code: the golden files in tests/assets/parity/
hold tiny release-layout checkpoints (the released files' tensors), the inputs and the original code's
outputs, written by `python -m src.tools.parity --storygpt-v CLONE --only storygpt_v --write-golden
tests/assets/parity` (docs/fidelity.md). Here our converters turn those checkpoints into run folders of
the real recipes, our task code computes the same outputs, and every row of the parity table must hold:
the release modes (which the converters select) within the tolerance, and our own default modes where
they differ from the release really different (else the release key would be pointless)."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.tools.parity.common import max_abs_diff, read_golden
from src.tools.parity.sgv_ours import STAGE1, expected_outputs, stage1_outputs
from src.tools.parity.sgv_ours_stage2 import STAGE2, stage2_outputs
from src.tools.parity.sgv_ours_stage2 import expected_outputs as stage2_expected

GOLDEN = Path(__file__).resolve().parent / "assets" / "parity"


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    tensors, meta = read_golden(GOLDEN / "storygptv_stage1.safetensors")
    return expected_outputs(tensors), stage1_outputs(tensors, meta, tmp_path_factory.mktemp("parity-stage1"))


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
    tensors, meta = read_golden(GOLDEN / "storygptv_stage2.safetensors")
    outputs = stage2_outputs(tensors, meta, stage1[1]["_stage1"], tmp_path_factory.mktemp("parity-stage2"))
    return stage2_expected(tensors), outputs


def _check(comparisons, expected: dict, ours: dict) -> None:
    compared = 0
    for c in comparisons:
        if c.key not in expected:  # tool-only rows (too large for the golden files)
            continue
        compared += 1
        diff = max_abs_diff(ours[c.ours_key], expected[c.key])
        tolerance = float(expected[c.tolerance_key]) if c.tolerance_key else c.tolerance
        if c.deliberate:
            assert diff > tolerance, (f"{c.component}: our default modes now equal the release ({diff:.2e}); "
                                      f"the key {c.deliberate} and its docs/fidelity.md entry are stale")
        else:
            assert diff <= tolerance, (f"{c.component}: ours ({c.ours}) differs from the release ({c.original}) "
                                       f"by {diff:.2e} > {tolerance:.0e}")
    assert compared >= 10


def test_stage1_converted_release_matches_the_original_code(stage1):
    _check(STAGE1, *stage1)


def test_stage2_converted_release_matches_the_original_code(stage2):
    _check(STAGE2, *stage2)
