"""SEED-Story's parity checks (docs/fidelity.md, "SEED-Story"): the original code from clones of
TencentARC/SEED-Story (and AILab-CVC/SEED-X, for peft 0.4 and its de-tokenizer resampler) runs at toy
size on seeded random weights (seed_cases.py, through seed_release.py's import shims); our converters
and modules run on the same weights and inputs (seed_ours.py); one row per compared component.

    python -m src.tools.parity --seed-story CLONE --seed-x CLONE --only seed_story [--write-golden tests/assets/parity]
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Optional

from src.tools.parity import seed_cases, seed_ours
from src.tools.parity import seed_tiny as tiny
from src.tools.parity.common import Row, write_golden

# Seeds of the toy weights and inputs. The agent's is one whose greedy beat from the first frame has a
# few words before its image (random weights mostly ramble), so the end-to-end sample draws something.
SEEDS = {"vit": 1, "agent": 9, "detokenizer": 3, "seedx": 4, "llama": 5, "vae": 6, "frames": 7}
GOLDEN_PREFIX = "seed_"


def release_cases(seed_story: Path, seed_x: Path) -> list[seed_cases.Case]:
    """Every case, computed by the original code (its printing is swallowed)."""
    import transformers.generation.utils  # noqa: F401  (imported before our `src` is hidden)
    import transformers.models.llama  # noqa: F401
    from transformers.utils import logging as hf_logging

    from src.tools.parity.seed_release import release_env

    spec = tiny.tokenizer_vocab()
    base = tiny.base_llama_state(len(tiny.llama_tokenizer(spec)), SEEDS["llama"])
    frames = tiny.story_frames(SEEDS["frames"])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stdout(io.StringIO()), release_env(seed_story, seed_x) as rel:
            vit = seed_cases.build_vit(rel, SEEDS["vit"])
            cases = [seed_cases.vit_case(rel, vit)]
            adapter = seed_cases.build_adapter(rel, rel.resampler, SEEDS["detokenizer"])
            cases.append(seed_cases.detokenizer_case(rel, adapter))
            seedx = seed_cases.build_adapter(rel, rel.seed_x_resampler, SEEDS["seedx"], normalize=False)
            cases.append(seed_cases.detokenizer_case(rel, seedx, "seedx_detokenizer", with_unet=False))
            with rel.peft04():
                agent = seed_cases.build_agent(rel, spec, base, SEEDS["agent"])
                cases.append(seed_cases.agent_case(rel, vit, agent, spec, base, frames))
                beat = seed_cases.write_beat(rel, vit, agent, spec, frames)
                cases.append(seed_cases.bf16_case(rel, vit, agent, adapter, cases[0], cases[-1]))
            cases.append(seed_cases.e2e_case(rel, vit, adapter, beat, frames, SEEDS["vae"]))
    finally:
        hf_logging.set_verbosity(verbosity)
    return cases


def checks(seed_story: Path, seed_x: Path, golden_dir: Optional[Path] = None) -> list[Row]:
    cases = release_cases(Path(seed_story), Path(seed_x))
    if golden_dir is not None:
        for case in cases:
            write_golden(Path(golden_dir), case.name, case.tensors, case.meta)
    with tempfile.TemporaryDirectory(prefix="parity_seed_") as tmp:
        return seed_ours.compare({case.name: (case.tensors, case.meta) for case in cases}, Path(tmp))
