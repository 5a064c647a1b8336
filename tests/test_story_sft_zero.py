"""story_sft under DeepSpeed ZeRO-2 through the real launch (`accelerate launch --config_file
configs/accelerate/cpu_zero2.yaml -m src.train`, what `LAUNCH=zero2 bash scripts/train_story_sft.sh` runs
on a machine without a GPU): two processes, DeepSpeed's CPU accelerator, gloo. The optimizer state is
partitioned across the two ranks; at the checkpoint the engine consolidates the trainable weights into
one trainable.safetensors (no zero_to_fp32 step), which must hold exactly the task's trainable names at
full shape in fp32, and load strictly into a fresh task."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.ports import free_port
from tests.test_train_ldm import run

RECIPE = "configs/story_sft/toy.yaml"


@pytest.fixture(scope="module")
def story_root(tmp_path_factory) -> Path:
    from src.data.toy import generate_toy_dataset

    return generate_toy_dataset(tmp_path_factory.mktemp("data") / "toy_story", seed=0, num_train=2, num_val=1,
                                num_test=1, story_frames=10, chunk_frames=10, num_workers=1, progress=False)


def test_zero2_run_consolidates_exactly_the_trainable_weights(story_root, seed_stack, tmp_path, monkeypatch):
    from src.config import load_config
    from src.tasks import build_task

    overrides = [f"data.root={story_root}", f"tiny_stack={seed_stack}", f"model.llm={seed_stack}/Llama-2-7b-hf",
                 f"model.tokenizer_path={seed_stack}/qwen_vit.safetensors", f"output_root={tmp_path}/outputs",
                 "logging.tensorboard=false", "train.log_every=1", "train.validate_every=0", "train.max_minutes=0",
                 "data.num_workers=0", "train.batch_size=1", "train.max_steps=3", "train.checkpoint_every=3",
                 "optim.warmup_steps=0", "run_name=zero2"]
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_zero2.yaml",
               "--main_process_port", str(free_port()), "-m", "src.train", "--config", RECIPE, *overrides]).stdout
    assert "DeepSpeed ZeRO-2: DeepSpeedEngine with DeepSpeedZeroOptimizer, 2 processes on cpu" in out

    step = tmp_path / "outputs" / "story_sft" / "toy_story" / "zero2" / "checkpoints" / "step_000003"
    shards = sorted(p.name for p in (step / "deepspeed" / "state").glob("*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]  # partitioned, fp32 (no mixed precision)
    consolidated = load_file(str(step / "trainable.safetensors"))

    fresh = build_task(load_config(RECIPE, overrides))
    own = fresh.trainable_state_dict()
    assert consolidated.keys() == own.keys()
    assert all(consolidated[n].shape == own[n].shape and consolidated[n].dtype == torch.float32 for n in own)
    lora_b = [n for n in own if "lora_B" in n]  # peft starts lora_B at zero: three steps must have moved it
    assert lora_b and all(consolidated[n].abs().sum() > 0 for n in lora_b)

    restarted = build_task(load_config(RECIPE, overrides + [f"model.init_weights={step / 'trainable.safetensors'}"]))
    for name, value in restarted.trainable_state_dict().items():  # a strict load, and the very same values
        assert torch.equal(value, consolidated[name]), name
