"""LAVIS blip2_opt -> transformers conversion, the tiny BLIP-2 builder and BLIP-2 captioning."""
import pytest
import torch
from PIL import Image

from eval.captioning import caption_frames, caption_scores, load_captioner
from eval.stories_io import EvalInputError
from src.tools.convert.blip2 import convert, lavis_to_transformers, overlay, transformers_to_lavis
from src.tools.tiny.blip2 import build_tiny_blip2, ensure_tiny_blip2

# The tiny model's sizes (src/tools/tiny/blip2.py): width 32, MLP 64, 2 layers everywhere,
# 16 patches + CLS, 8 query tokens, Q-Former cross-attention on even layers.
D, MLP, PATCH, TOKENS = 32, 64, 16, 8


def lavis_blip2_opt_state(vocab_size, max_positions):
    """A state dict with LAVIS blip2_opt's key names (EVA-ViT, BERT Q-Former, OPT), written out by hand."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    state = {"query_tokens": rand(1, TOKENS, D), "ln_vision.weight": rand(D), "ln_vision.bias": rand(D),
             "visual_encoder.cls_token": rand(1, 1, D), "visual_encoder.pos_embed": rand(1, (64 // PATCH) ** 2 + 1, D),
             "visual_encoder.patch_embed.proj.weight": rand(D, 3, PATCH, PATCH),
             "visual_encoder.patch_embed.proj.bias": rand(D),
             "Qformer.bert.embeddings.LayerNorm.weight": rand(D), "Qformer.bert.embeddings.LayerNorm.bias": rand(D),
             "Qformer.bert.embeddings.position_ids": torch.arange(512).unsqueeze(0),
             "opt_proj.weight": rand(D, D), "opt_proj.bias": rand(D),
             "opt_model.model.decoder.embed_tokens.weight": rand(vocab_size, D),
             "opt_model.model.decoder.embed_positions.weight": rand(max_positions + 2, D),
             "opt_model.model.decoder.final_layer_norm.weight": rand(D),
             "opt_model.model.decoder.final_layer_norm.bias": rand(D),
             }
    state["opt_model.lm_head.weight"] = state["opt_model.model.decoder.embed_tokens.weight"]  # OPT ties them
    for i in range(2):
        vit = f"visual_encoder.blocks.{i}."
        state.update({vit + "norm1.weight": rand(D), vit + "norm1.bias": rand(D), vit + "norm2.weight": rand(D),
                      vit + "norm2.bias": rand(D), vit + "attn.qkv.weight": rand(3 * D, D),
                      vit + "attn.q_bias": rand(D), vit + "attn.v_bias": rand(D),
                      vit + "attn.proj.weight": rand(D, D), vit + "attn.proj.bias": rand(D),
                      vit + "mlp.fc1.weight": rand(MLP, D), vit + "mlp.fc1.bias": rand(MLP),
                      vit + "mlp.fc2.weight": rand(D, MLP), vit + "mlp.fc2.bias": rand(D)})
        bert = f"Qformer.bert.encoder.layer.{i}."
        blocks = ["attention"] + (["crossattention"] if i % 2 == 0 else [])
        for block in blocks:
            for proj in ("query", "key", "value"):
                state[f"{bert}{block}.self.{proj}.weight"] = rand(D, D)
                state[f"{bert}{block}.self.{proj}.bias"] = rand(D)
            state.update({f"{bert}{block}.output.dense.weight": rand(D, D), f"{bert}{block}.output.dense.bias": rand(D),
                          f"{bert}{block}.output.LayerNorm.weight": rand(D), f"{bert}{block}.output.LayerNorm.bias": rand(D)})
        state.update({bert + "intermediate_query.dense.weight": rand(MLP, D), bert + "intermediate_query.dense.bias": rand(MLP),
                      bert + "output_query.dense.weight": rand(D, MLP), bert + "output_query.dense.bias": rand(D),
                      bert + "output_query.LayerNorm.weight": rand(D), bert + "output_query.LayerNorm.bias": rand(D)})
        opt = f"opt_model.model.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{opt}self_attn.{proj}.weight"] = rand(D, D)
            state[f"{opt}self_attn.{proj}.bias"] = rand(D)
        state.update({opt + "self_attn_layer_norm.weight": rand(D), opt + "self_attn_layer_norm.bias": rand(D),
                      opt + "fc1.weight": rand(MLP, D), opt + "fc1.bias": rand(MLP), opt + "fc2.weight": rand(D, MLP),
                      opt + "fc2.bias": rand(D), opt + "final_layer_norm.weight": rand(D),
                      opt + "final_layer_norm.bias": rand(D)})
    return state


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    return build_tiny_blip2(tmp_path_factory.mktemp("blip2") / "blip2", data_root=None, seed=0)


def test_lavis_checkpoint_round_trips_through_transformers(tiny_blip2, tmp_path):
    from transformers import Blip2ForConditionalGeneration
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2)
    text = model.config.text_config
    lavis = lavis_blip2_opt_state(text.vocab_size, text.max_position_embeddings)
    converted = lavis_to_transformers(lavis)
    # every transformers weight is covered and the model loads it strictly
    assert set(converted) == set(model.state_dict())
    assert overlay(model, converted, "test") == len(converted)
    loaded = model.state_dict()
    bias = loaded["vision_model.encoder.layers.1.self_attn.qkv.bias"]
    assert torch.equal(bias, torch.cat([lavis["visual_encoder.blocks.1.attn.q_bias"], torch.zeros(D),
                                        lavis["visual_encoder.blocks.1.attn.v_bias"]]))
    assert torch.equal(loaded["qformer.encoder.layer.0.crossattention.attention.key.weight"],
                       lavis["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(loaded["vision_model.post_layernorm.weight"], lavis["ln_vision.weight"])
    # and back: every LAVIS weight (the position_ids buffer aside) comes back unchanged
    back = transformers_to_lavis(loaded)
    expected = {key: value for key, value in lavis.items() if key != "Qformer.bert.embeddings.position_ids"}
    assert set(back) == set(expected)
    assert all(torch.equal(back[key], expected[key]) for key in expected)

    # the CLI path: a LAVIS file holding only the fine-tuned parts overlays the base folder
    partial = {key: value for key, value in lavis.items() if key.startswith(("Qformer.", "query_tokens", "opt_proj"))}
    torch.save({"model": partial}, tmp_path / "captioner.pth")
    assert convert(tmp_path / "captioner.pth", tiny_blip2, tmp_path / "converted") == len(partial) - 1
    reloaded = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "converted").state_dict()
    assert torch.equal(reloaded["language_projection.weight"], lavis["opt_proj.weight"])


def test_converter_names_unknown_and_misfit_keys(tiny_blip2):
    from transformers import Blip2ForConditionalGeneration
    with pytest.raises(EvalInputError, match=r"1 LAVIS keys .*t5_model\.encoder\.weight"):
        lavis_to_transformers({"t5_model.encoder.weight": torch.zeros(1)})
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2)
    with pytest.raises(EvalInputError, match=r"captioner\.pth: .*language_projection\.weight \(shape \(4, 4\)"):
        overlay(model, lavis_to_transformers({"opt_proj.weight": torch.zeros(4, 4)}), "captioner.pth")


def test_tiny_blip2_captions_deterministically(tiny_blip2):
    assert ensure_tiny_blip2(tiny_blip2) == tiny_blip2  # present: not rebuilt
    captioner = load_captioner(tiny_blip2, "cpu")
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    first = caption_frames(captioner, frames, "cpu", batch_size=2, num_captions=2, num_beams=2, max_new_tokens=4)
    again = caption_frames(captioner, frames, "cpu", batch_size=3, num_captions=2, num_beams=2, max_new_tokens=4)
    assert len(first) == 3 and all(len(captions) == 2 for captions in first)
    assert first == again
    with pytest.raises(EvalInputError, match="num_beams"):
        caption_frames(captioner, frames, "cpu", batch_size=2, num_captions=3, num_beams=2, max_new_tokens=4)


def test_caption_scores_compare_generated_with_the_right_references():
    scores, per_frame = caption_scores(["a red ball", "a dog"], ["a red ball", "the cat"],
                                       [["a red ball", "red ball"], ["a dog", "one dog"]])
    assert scores["bleu1_vs_dataset"] < 1.0 and scores["bleu1_vs_real_captions"] == pytest.approx(1.0)
    assert per_frame[0] > 0 and scores["cider"] == pytest.approx(sum(per_frame) / 2)


def test_missing_captioner_says_what_to_put_where(tmp_path):
    with pytest.raises(EvalInputError, match=r"(?s)blip2-opt-2\.7b.*src\.tools\.convert\.blip2 --lavis captioner\.pth"):
        load_captioner(tmp_path / "pretrained" / "blip2-opt-2.7b-flintstones", "cpu")
