"""The released SEED-Story agent (ContinuousLVLM: a peft 0.4 LoRA Llama with a resized vocabulary, input and
output resamplers) -> story_sft's trainable weights (src/tools/convert/seed_agent.py).

The "release" here is built independently of the converter, at tiny size, the way SEED-Story builds its
agent (docs/seed_story.md): the tiny Llama with its vocabulary resized to V+2+K, peft's LoRA with the recipe's
LoraConfig, embed_tokens / lm_head trained whole, two Qwen-VL Resamplers (same parameter names as
QwenAttnPool), its state dict renamed to peft 0.4's names (no `base_layer`). The converted weights must
load strictly into the tiny task and give the release's hidden states, logits and resampler outputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from src.errors import run_entry
from src.tools.convert.seed_agent import main

RECIPE = "configs/story_sft/toy.yaml"


@pytest.fixture
def overrides(seed_stack) -> list[str]:
    return [f"tiny_stack={seed_stack}", f"model.llm={seed_stack}/Llama-2-7b-hf",
            f"model.tokenizer_path={seed_stack}/qwen_vit.safetensors"]


def build(overrides, extra=()):
    from src.config import load_config
    from src.tasks import build_task

    return build_task(load_config(RECIPE, [*overrides, *extra]))


class ReleasedAgent(nn.Module):
    """SEED-Story's ContinuousLVLM's parameters: llm, input_resampler, output_resampler."""

    def __init__(self, overrides):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from src.config import load_config
        from src.models.resamplers import QwenAttnPool

        m = load_config(RECIPE, overrides).model
        lm = AutoModelForCausalLM.from_pretrained(m.llm)
        self.vocab = lm.get_input_embeddings().num_embeddings
        lm.resize_token_embeddings(self.vocab + 2 + m.num_image_tokens)  # <img>, </img>, <img_00000>..
        self.llm = get_peft_model(lm, LoraConfig(r=m.lora.r, lora_alpha=m.lora.lora_alpha, lora_dropout=0.05,
                                                 target_modules=list(m.lora.target_modules),
                                                 modules_to_save=list(m.lora.modules_to_save), task_type="CAUSAL_LM"))
        width, feature_dim, grid = lm.config.hidden_size, 128, 8  # the tiny Qwen-ViT: [B,64,128]
        self.input_resampler = QwenAttnPool(int(m.num_image_tokens ** 0.5), width, 4, kv_dim=feature_dim)
        self.output_resampler = QwenAttnPool(grid, feature_dim, 4, kv_dim=width)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # "trained": nothing left at its initial value (lora_B starts at zero, norms at one)
            for name, param in self.named_parameters():
                if param.requires_grad or "embed_tokens" in name or "lm_head" in name:
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))
        self.eval()

    def released_state(self, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """The state dict under peft 0.4's names: a LoRA'd Linear holds its base weight directly."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad} | {
            n for n in self.state_dict() if "embed_tokens" in n or "lm_head" in n}
        return {name.replace(".base_layer.", "."): value.clone() for name, value in self.state_dict().items()
                if not trainable_only or name in keep}


@pytest.fixture
def released(overrides) -> ReleasedAgent:
    return ReleasedAgent(overrides)


def convert(src: Path, out: Path, overrides: list[str], capsys) -> tuple[int, str]:
    status = run_entry(main, ["--src", str(src), "--out", str(out), "--config", RECIPE, *overrides])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_full_released_agent_converts_loads_strictly_and_computes_the_same(released, overrides, tmp_path, capsys):
    src = tmp_path / "pytorch_model.bin"
    torch.save(released.released_state(), src)  # zero_to_fp32's output: read back with weights_only=True
    out = tmp_path / "agent" / "trainable.safetensors"
    status, log = convert(src, out, overrides, capsys)
    assert status == 0, log
    assert "frozen base weights of the LoRA'd projections" in log and "fixed 2D sin-cos" in log

    task = build(overrides, [f"model.init_weights={out}"]).eval()  # strict, by name
    converted = load_file(str(out))
    assert converted.keys() == task.trainable_state_dict().keys()
    ids = torch.tensor([[1] + list(range(5, 12)) + list(range(released.vocab, released.vocab + 6)) + [2]])
    with torch.no_grad():
        theirs = released.llm(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        llm = task.mllm.llm
        hidden = llm(llm.embed_ids(ids), torch.ones_like(ids))
        torch.testing.assert_close(hidden, theirs.hidden_states[-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(llm.logits_at(hidden[0]), theirs.logits[0], rtol=1e-4, atol=1e-5)
        features = torch.randn(2, 64, 128)
        torch.testing.assert_close(task.mllm.input_resampler(features), released.input_resampler(features))
        tokens = torch.randn(2, 16, 64)
        torch.testing.assert_close(task.mllm.output_resampler(tokens), released.output_resampler(tokens))
    names = llm.tokenizer.convert_ids_to_tokens(list(range(released.vocab, released.vocab + 3)))
    assert names == ["<img>", "</img>", "<img_00000>"]  # the release's token order


def test_trainable_only_safetensors_converts_to_the_same_weights(released, overrides, tmp_path, capsys):
    save_file(released.released_state(trainable_only=True), str(tmp_path / "agent.safetensors"))
    assert convert(tmp_path / "agent.safetensors", tmp_path / "a.safetensors", overrides, capsys)[0] == 0
    torch.save(released.released_state(), tmp_path / "full.bin")
    assert convert(tmp_path / "full.bin", tmp_path / "b.safetensors", overrides, capsys)[0] == 0
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage,message", [
    ("extra", "1 unmapped keys ['vision_model.proj.weight']"),
    ("missing", "1 missing ['mllm.llm.lm.base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight']"),
    ("rows", "'llm.base_model.model.lm_head.weight' has 380 rows; the recipe's LLM has"),
    ("positions", "'output_resampler.pos_embed' (64, 128) is not the fixed 2D sin-cos table"),
    ("shape", "'mllm.input_resampler.query' has shape (9, 64), the recipe expects (16, 64)"),
])
def test_a_mismatched_checkpoint_is_a_one_line_error_naming_the_keys(released, overrides, tmp_path, capsys,
                                                                      damage, message):
    state = released.released_state()
    if damage == "extra":
        state["vision_model.proj.weight"] = torch.zeros(2, 2)
    elif damage == "missing":
        del state["llm.base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight"]
    elif damage == "rows":
        state["llm.base_model.model.lm_head.weight"] = state["llm.base_model.model.lm_head.weight"][:380]
    elif damage == "positions":
        state["output_resampler.pos_embed"] = state["output_resampler.pos_embed"] + 0.1
    else:
        state["input_resampler.query"] = state["input_resampler.query"][:9]
    torch.save(state, tmp_path / "bad.bin")
    status, log = convert(tmp_path / "bad.bin", tmp_path / "out.safetensors", overrides, capsys)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and message in errors[0] and str(tmp_path / "bad.bin") in errors[0], log
    assert not (tmp_path / "out.safetensors").exists()
