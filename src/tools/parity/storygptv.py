"""StoryGPT-V against its release (github.com/xiaoqian-shen/StoryGPT-V): `python -m src.tools.parity
--storygpt-v CLONE --only storygpt_v [--write-golden tests/assets/parity]` (docs/fidelity.md).

1. storygptv_stage1.release_cases builds the release's modules at tiny sizes from the clone with seeded
   weights, writes them as the release saves them (stage 1: accelerate's pytorch_model.bin of StoryModel;
   stage 2: GILL's pretrained_ckpt.pth.tar + model_args.json) and runs the release's code on the inputs of
   sgv_cases.py: modules one by one, the training losses, its data code (names, references), the
   delayed-conditioning sampler on a 3-frame story, and eval_llm.py's story loop with OPT and Llama.
2. sgv_ours / sgv_ours_stage2 convert those files with our converters into run folders of the real
   recipes (configs/char_ldm/flintstones.yaml, pororo.yaml, configs/align/flintstones.yaml), load them with our
   task code and compute the same outputs: in the release modes the converters select, and in our own
   default modes where they differ (the "deliberate" rows).
3. One row per comparison; `--write-golden` also writes the golden files tests/test_parity_storygptv.py
   reads (everything but the `tool/` entries, too large for the repository).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import torch

from src.tools.parity.common import END_TO_END_TOLERANCE, TOLERANCE, Row, max_abs_diff, write_golden

GOLDEN_NAMES = {"stage1": "storygptv_stage1", "stage2": "storygptv_stage2"}


def _note(comparison, ours, expected) -> str:
    notes = [comparison.note] if comparison.note else []
    ours, expected = torch.as_tensor(ours), torch.as_tensor(expected)
    if not ours.is_floating_point() and ours.dim() == 2 and ours.shape == expected.shape:
        same = int((ours == expected).all(1).sum())
        notes.append(f"{same}/{len(ours)} captions identical")
    if comparison.tolerance == END_TO_END_TOLERANCE and ours.shape == expected.shape and ours.dim() >= 2:
        per_frame = ", ".join(f"{float((a.double() - b.double()).abs().max()):.1e}" for a, b in zip(ours, expected))
        notes.append(f"per frame {per_frame}; values up to {float(expected.abs().max()):.1f}")
    return "; ".join(notes)


def rows_for(comparisons, ours: dict, expected: dict) -> list[Row]:
    rows = []
    for c in comparisons:
        if c.key not in expected:
            continue
        diff = max_abs_diff(ours[c.ours_key], expected[c.key])
        tolerance = float(expected[c.tolerance_key]) if c.tolerance_key else c.tolerance
        note = _note(c, ours[c.ours_key], expected[c.key]) + (f" = {tolerance:.1e}" if c.tolerance_key else "")
        rows.append(Row(c.component, c.original, c.ours, c.converter, diff, tolerance, c.deliberate, note))
    return rows


def _real_reference_rows(diffs: dict) -> list[Row]:
    rows = []
    for mode, key in (("release", None), ("ours", "model.reference_preprocess=release")):
        worst = max(diffs[mode].values())
        rows.append(Row("reference preprocessing, the release's data/chars/*.jpeg" + ("" if key is None else ": ours"),
                        "models/transforms.py:get_object_transforms", "src/data/references.py:load_reference", "-",
                        worst, TOLERANCE, key, f"{len(diffs[mode])} images; tool only"))
    return rows


def checks(clone: Path, golden_dir: Optional[Path] = None) -> list[Row]:
    from src.tools.parity import sgv_ours, sgv_ours_stage2
    from src.tools.parity.storygptv_stage1 import release_cases

    with tempfile.TemporaryDirectory(prefix="parity-storygptv-") as tmp:
        work = Path(tmp)
        cases = release_cases(Path(clone), work / "release")
        if golden_dir is not None:
            for stage in GOLDEN_NAMES:
                tensors, meta = cases[stage]
                kept = {k: v for k, v in tensors.items() if not k.startswith("tool/")}
                path = write_golden(Path(golden_dir), GOLDEN_NAMES[stage], kept, meta)
                print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        (tensors1, meta1), (tensors2, meta2) = cases["stage1"], cases["stage2"]
        ours1 = sgv_ours.stage1_outputs(tensors1, meta1, work / "ours")
        ours2 = sgv_ours_stage2.stage2_outputs(tensors2, meta2, ours1["_stage1"], work / "ours")
        rows = rows_for(sgv_ours.STAGE1, ours1, sgv_ours.expected_outputs(tensors1))
        rows += _real_reference_rows(cases["tool"]["real_refs"])
        rows += rows_for(sgv_ours_stage2.STAGE2, ours2, sgv_ours_stage2.expected_outputs(tensors2))
    return rows
