"""Convert StoryGPT-V's released stage-2 weights (GILL's `pretrained_ckpt.pth.tar`) into an align
checkpoint of ours.

`python -m src.tools.convert.storygptv_llm --src pretrained_ckpt.pth.tar --out outputs/align/storygptv
    --config configs/align/flintstones.yaml [key=value ...]`

The source layout
-----------------
StoryGPT-V's stage 2 (github.com/xiaoqian-shen/StoryGPT-V, `train_llm.py`, a fork of GILL,
github.com/kohjingyu/gill) saves, when validation improves, `torch.save({'state_dict': ...})` with the
`module.` prefix removed and every key containing `.lm` or `.visual_model` left out (the frozen LLM and
CLIP tower). What remains are `GILLModel`'s own parameters under `model.` (`gill/models.py`,
`gill/layers.py`):
  model.input_embeddings.weight         only the last R rows: the [IMG0..R-1] input embeddings [R, D]
  model.visual_embeddings.{weight,bias} Linear(W -> K*D): pooled CLIP features -> K soft tokens
  model.gen_text_hidden_fcs.0.fc.*      the GILL mapper (`TextFcLayer`, mode gill_mapper): Linear(D -> d)
  model.gen_text_hidden_fcs.0.tfm.*     nn.Transformer(d, 4 + 4 layers, pre-LN): same names as ours
  model.gen_text_hidden_fcs.0.query_embs [1, Q, d]   the learned queries
  model.gen_text_hidden_fcs.0.model.*   Linear(d -> E)
  model.ret_text_hidden_fcs.*, model.visual_fc.*, model.logit_scale
                                        GILL's retrieval head: unused by StoryGPT-V; dropped and counted
Only one text_emb_layer (the last, `--text-emb-layers -1`, the default) is supported; a second mapper
(`gen_text_hidden_fcs.1.*`) is an error.

Llama: its output head is untied and was never saved (the keys hold `.lm`), so the [IMG] output rows
are not in the release. They only score the [IMG] tokens in the CE loss; at inference the tokens are
forced. They are written as zeros and the conversion report says so.

What this writes: `OUT/checkpoints/step_000000/` in src/engine/checkpoint.py's layout (trainable.safetensors
holds exactly the align task's trainable parameters in frozen mode) and, with --config, `OUT/config.yaml`,
which selects the release's inference behaviour where ours differs (RELEASE_MODES, docs/fidelity.md;
`--no-release-modes` keeps the recipe's choices; key=value overrides win over both).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

from src.tools.convert.storygptv_ldm import _write_config, load_source, write_checkpoint

MAPPER = "model.gen_text_hidden_fcs.0."
RETRIEVAL = ("model.ret_text_hidden_fcs.", "model.visual_fc.", "model.logit_scale")


# The release's behaviour where ours differs (docs/fidelity.md, "StoryGPT-V"; src/tasks/align.py).
RELEASE_MODES = ["model.inference_prompt=release", "model.frame_preprocess=release",
                 "model.pronoun_start_merge_step=1"]


class ConversionError(ValueError):
    pass


def convert_state_dict(source: dict, untied_output: bool) -> tuple[dict, dict]:
    """GILL's stripped state dict -> (our trainable weights, report)."""
    state = source.get("state_dict", source) if isinstance(source, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError("expected {'state_dict': {name: tensor}} (GILL's pretrained_ckpt.pth.tar) or a flat "
                              "name -> tensor dict")
    out, dropped, unknown = {}, [], []
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key == "model.input_embeddings.weight":
            out["llm.image_embeddings"] = value
        elif key.startswith("model.visual_embeddings."):
            out["visual_tokens.proj." + key.rsplit(".", 1)[1]] = value
        elif key == MAPPER + "query_embs":
            if value.dim() != 3 or value.shape[0] != 1:
                raise ConversionError(f"'{key}': expected [1, Q, d], got {tuple(value.shape)}")
            out["mapper.queries"] = value[0]
        elif key.startswith(MAPPER + "fc.") or key.startswith(MAPPER + "tfm."):
            out["mapper." + key[len(MAPPER):]] = value
        elif key.startswith(MAPPER + "model."):
            out["mapper.out." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(RETRIEVAL):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        second = any("_fcs.1." in k for k in unknown)
        raise ConversionError(f"{len(unknown)} key(s) this converter does not know: {', '.join(sorted(unknown)[:6])}"
                              f"{' (a second text_emb_layer mapper is not supported)' if second else ''}")
    needed = ["llm.image_embeddings", "visual_tokens.proj.weight", "mapper.queries", "mapper.fc.weight", "mapper.out.weight"]
    missing = [name for name in needed if name not in out]
    if missing:
        raise ConversionError(f"the source lacks what {', '.join(missing)} is made from")
    rows, width = out["llm.image_embeddings"].shape
    if out["visual_tokens.proj.weight"].shape[0] % width:
        raise ConversionError(f"model.visual_embeddings.weight has {out['visual_tokens.proj.weight'].shape[0]} rows, "
                              f"not a multiple of the LLM width {width}")
    if untied_output:
        out["llm.image_output"] = torch.zeros(rows, width, dtype=out["llm.image_embeddings"].dtype)
    out = {name: tensor.float() for name, tensor in out.items()}
    report = {"num_image_tokens": rows, "llm_width": width,
              "visual_tokens": out["visual_tokens.proj.weight"].shape[0] // width,
              "vision_width": out["visual_tokens.proj.weight"].shape[1],
              "conditioning": list(out["mapper.queries"].shape[:1]) + [out["mapper.out.weight"].shape[0]],
              "mapper_width": out["mapper.queries"].shape[1], "dropped_retrieval_head": len(dropped),
              "image_output": "zeros (not in the release: Llama's lm_head rows were never saved)" if untied_output
              else "tied to the input embeddings (OPT)"}
    return out, report


def _untied(cfg) -> bool:
    from transformers import AutoConfig

    llm = AutoConfig.from_pretrained(cfg.model.llm)
    return not getattr(llm, "tie_word_embeddings", True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="StoryGPT-V stage-2 pretrained_ckpt.pth.tar")
    parser.add_argument("--out", required=True, type=Path, help="run folder to create (checkpoints/step_000000)")
    parser.add_argument("--config", default=None, help="an align recipe to save as OUT/config.yaml")
    parser.add_argument("--untied-output", action="store_true",
                        help="without --config: the LLM's output head is untied (Llama)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-release-modes", action="store_true",
                        help="keep the recipe's own choices where the release behaves otherwise (docs/fidelity.md)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for --config")
    args = parser.parse_args(argv)
    if args.overrides and not args.config:
        parser.error("key=value overrides need --config")
    try:
        cfg = None
        if args.config:
            from src.config import load_config

            cfg = load_config(args.config, args.overrides)
            if cfg.task == "align" and not args.no_release_modes:
                cfg = load_config(args.config, RELEASE_MODES + list(args.overrides))
            if cfg.task != "align":
                raise ConversionError(f"{args.config}: task '{cfg.task}'; these weights are for task 'align'")
            if cfg.model.llm_mode != "frozen":  # the release trained the frozen-LLM mode: no LLM weights to load
                raise ConversionError(f"{args.config}: model.llm_mode={cfg.model.llm_mode}; the released weights are "
                                      f"frozen-mode (no LLM weights): set model.llm_mode=frozen")
        untied = _untied(cfg) if cfg is not None else args.untied_output
        trainable, report = convert_state_dict(load_source(args.src), untied)
        if cfg is not None and cfg.model.num_image_tokens != report["num_image_tokens"]:
            raise ConversionError(f"{args.config}: model.num_image_tokens={cfg.model.num_image_tokens}, the release "
                                  f"has {report['num_image_tokens']} [IMG] rows")
        info = {"converted_from": str(args.src.resolve()), "converter": "src.tools.convert.storygptv_llm",
                "conversion": report}
        ckpt = write_checkpoint(args.out, trainable, {}, info, overwrite=args.overwrite)
        config = _write_config(cfg, args.out, args.overwrite) if cfg is not None else None
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (pickle.UnpicklingError, RuntimeError, OSError) as err:
        print(f"error: {args.src}: {err}", file=sys.stderr)
        return 2
    print(f"converted {args.src} -> {ckpt}")
    for key, value in report.items():
        print(f"  {key}: {value}")
    if config is not None:
        print(f"  config: {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
