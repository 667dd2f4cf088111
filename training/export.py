"""`cocu-train export --format transformers`: a checkpoint as a folder that ``transformers.GroupViTModel`` loads.

Why: a trained cocu GroupViT should be usable where people already run GroupViT (the Hugging Face port of
NVlabs/GroupViT), without cocu installed. cocu's parameter names follow the reference, so the conversion is a
renaming plus three reshapes (the fused ViT ``qkv`` and the text tower's ``in_proj`` split into q/k/v, the
projectors' 1x1 ``Conv1d`` weights squeezed to ``Linear``). What the port cannot express (a conv stem, heads that
differ per stage, a projector depth other than 2, ...) is refused in one line naming the field, never exported
approximately. The folder also holds the CLIP BPE tokenizer (from open_clip's bundled vocabulary, no network), the
image processor and a model card (``README.md``) with the recipe, data, text mode, steps and the evaluation results
found beside the checkpoint.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cocu.curation.core.configs import option
from cocu.curation.core.errors import CocuError
from cocu.training.model import LOGIT_SCALE_MAX, GroupViTConfig

GROUPVIT_SINCE = "4.21.0"  # the first transformers release with GroupViT
FORMATS = ("transformers",)
MEAN = (0.485, 0.456, 0.406)  # IMAGENET_MEAN / 255, what cocu's training and evaluation normalise with
STD = (0.229, 0.224, 0.225)


class ExportError(CocuError):
    """A checkpoint that cannot be exported in the asked format, said in one line."""


@dataclass(frozen=True)
class ExportConfig:
    """How ``cocu-train export`` writes a checkpoint."""

    format: str = option("transformers", "Output format: a transformers GroupViTModel folder.", choices=FORMATS)


def refusal(config: GroupViTConfig) -> str | None:
    """Why transformers' GroupViT cannot hold this config (the field and its value), or None when it can."""
    v = config.vision
    checks = [
        (v.conv_stem, "vision.conv_stem", "transformers' GroupViT has a one-conv patch embedding"),
        (not v.patch_norm, "vision.patch_norm", "transformers' GroupViT always normalises the patch embedding"),
        (len(set(v.num_heads)) > 1, "vision.num_heads", "transformers' GroupViT has one head count for all stages"),
        (v.mlp_ratio != 4.0, "vision.mlp_ratio", "the grouping block's cross-attention MLP is 4x wide in cocu"),
        (not v.qkv_bias, "vision.qkv_bias", "transformers' GroupViT attention always has biases"),
        (not v.hard_assignment, "vision.hard_assignment", "transformers' GroupViT assigns hard"),
        (config.proj_num_layers != 2, "proj_num_layers", "transformers' GroupViT projectors have 2 layers"),
    ]
    for i in range(1, len(v.depths) - 1):  # its group projector reads num_output_groups of the stage before
        if v.num_group_tokens[i - 1] != v.num_output_groups[i - 1]:
            checks.append((True, "vision.num_output_groups", "each stage must output as many groups as it has tokens"))
    for failed, name, why in checks:
        if failed:
            value = getattr(v, name.split(".")[1]) if name.startswith("vision.") else getattr(config, name)
            return f"config field {name}={value!r} cannot be exported to transformers ({why})"
    return None


def hf_config_dict(config: GroupViTConfig) -> dict[str, Any]:
    """The ``transformers.GroupViTConfig`` arguments of a cocu config (``refusal`` must be None)."""
    v, t = config.vision, config.text
    return {
        "projection_dim": config.embed_dim,
        "projection_intermediate_dim": config.proj_hidden_dim,
        "vision_config": {
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "num_hidden_layers": sum(v.depths),
            "depths": list(v.depths),
            "num_group_tokens": list(v.num_group_tokens),
            "num_output_groups": [*v.num_output_groups, v.num_output_groups[-1]],  # one per stage; the last unused
            "num_attention_heads": v.num_heads[0],
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": v.in_chans,
            "hidden_act": "gelu",
            "assign_eps": v.assign_eps,
            "assign_mlp_ratio": [0.5, v.mlp_ratio],
        },
        "text_config": {
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": 4 * t.width,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": "quick_gelu",
            "pad_token_id": 49407,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
        },
    }


_VISION_RULES = [  # cocu img_encoder.* -> transformers vision_model.*, applied in order, first match wins
    (r"patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"patch_embed\.norm\.", "embeddings.layernorm."),
    (r"pos_embed$", "embeddings.position_embeddings"),
    (r"norm\.", "layernorm."),
    (r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.", r"encoder.stages.\1.layers.\2.layer_norm1."),
    (r"layers\.(\d+)\.blocks\.(\d+)\.norm2\.", r"encoder.stages.\1.layers.\2.layer_norm2."),
    (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", r"encoder.stages.\1.layers.\2.self_attn.out_proj."),
    (r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.", r"encoder.stages.\1.layers.\2.mlp."),
    (
        r"layers\.(\d+)\.downsample\.pre_assign_attn\.attn\.proj\.",
        r"encoder.stages.\1.downsample.pre_assign_attn.attn.out_proj.",
    ),
    (r"layers\.(\d+)\.", r"encoder.stages.\1."),
]
_TEXT_RULES = [  # cocu text_encoder.* -> transformers text_model.*
    (r"token_embedding\.", "embeddings.token_embedding."),
    (r"positional_embedding$", "embeddings.position_embedding.weight"),
    (r"ln_final\.", "final_layer_norm."),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"transformer\.resblocks\.(\d+)\.ln_1\.", r"encoder.layers.\1.layer_norm1."),
    (r"transformer\.resblocks\.(\d+)\.ln_2\.", r"encoder.layers.\1.layer_norm2."),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"encoder.layers.\1.mlp.fc1."),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"encoder.layers.\1.mlp.fc2."),
]


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cocu ``GroupViT.state_dict()`` -> ``transformers.GroupViTModel`` state dict (names and shapes)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "multi_label_logit_scale":  # a training-only temperature transformers has no place for
            continue
        if key == "logit_scale":  # cocu clamps exp(logit_scale) at 100 where it reads it; transformers does not
            out[key] = value.clamp(max=math.log(LOGIT_SCALE_MAX))
            continue
        fused = re.fullmatch(r"img_encoder\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        fused_text = re.fullmatch(r"text_encoder\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        if fused:
            stage, block, kind = fused.groups()
            prefix = f"vision_model.encoder.stages.{stage}.layers.{block}.self_attn"
        elif fused_text:
            layer, kind = fused_text.groups()
            prefix = f"text_model.encoder.layers.{layer}.self_attn"
        if fused or fused_text:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = part.clone()
            continue
        projector = re.fullmatch(r"(img|text)_projector\.(linear_hidden\.(\d+)|linear_out)\.(.+)", key)
        if projector:
            tower, _, index, rest = projector.groups()
            target = "visual_projection" if tower == "img" else "text_projection"
            position = 3 if index is None else int(index)  # Conv1d 0, BatchNorm 1 (ReLU 2), output Conv1d 3
            out[f"{target}.{position}.{rest}"] = value.squeeze(-1) if value.dim() == 3 else value
            continue
        out[_renamed(key)] = value
    return out


def _renamed(key: str) -> str:
    for source, rules, target in (
        ("img_encoder.", _VISION_RULES, "vision_model."),
        ("text_encoder.", _TEXT_RULES, "text_model."),
    ):
        if key.startswith(source):
            rest = key[len(source) :]
            for pattern, replacement in rules:
                if re.match(pattern, rest):
                    return target + re.sub(pattern, replacement, rest, count=1)
            return target + rest
    raise ExportError(f"parameter {key} has no counterpart in transformers' GroupViT")


def require_transformers() -> Any:
    """The installed transformers, or one line saying that it is missing or too old for GroupViT."""
    try:
        import transformers
    except ImportError:
        raise ExportError(
            f"--format transformers needs the transformers package (pip install 'cocu[hf]', {GROUPVIT_SINCE} or later)"
        ) from None
    if not hasattr(transformers, "GroupViTModel"):
        raise ExportError(
            f"the installed transformers {transformers.__version__} has no GroupViT; "
            f"install transformers {GROUPVIT_SINCE} or later (pip install 'cocu[hf]')"
        )
    return transformers


def to_transformers(model: torch.nn.Module, config: GroupViTConfig) -> Any:
    """A ``transformers.GroupViTModel`` holding ``model``'s weights, in eval mode."""
    why = refusal(config)
    if why is not None:
        raise ExportError(why)
    transformers = require_transformers()
    hf = transformers.GroupViTModel(transformers.GroupViTConfig(**hf_config_dict(config)))
    converted = convert_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    missing, unexpected = hf.load_state_dict(converted, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]  # a buffer transformers rebuilds itself
    if missing or unexpected:
        raise ExportError(f"conversion left parameters unmatched: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.eval()


def write_tokenizer(out: Path, context_length: int) -> Any:
    """vocab.json and merges.txt from open_clip's bundled CLIP BPE, then the tokenizer files transformers writes."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): index for token, index in bpe.encoder.items()}
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    tokenizer.save_pretrained(str(out))
    return tokenizer


EXPORT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
        "README.md",
        "cocu_export.json",
    }
)


def export_checkpoint(checkpoint: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> dict[str, Any]:
    """Write ``out``: the transformers model, tokenizer, processor and model card. Returns what the card records."""
    from cocu.curation.core.outputs import check_output_folder
    from cocu.curation.core.shards import atomic_write_json, sha256_file
    from cocu.training.checkpoint import load_groupvit
    from cocu.training.export_card import evaluations_beside, model_card, training_facts

    if config.format not in FORMATS:
        raise ExportError(f"unknown export format {config.format!r} (known: {', '.join(FORMATS)})")
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_folder(out, [checkpoint], lambda entry: entry.name in EXPORT_FILES, "cocu-train export")
    model, model_config = load_groupvit(checkpoint)
    why = refusal(model_config)
    if why is not None:
        raise ExportError(f"{checkpoint}: {why}")
    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()  # the command prints its own one line
    hf = to_transformers(model, model_config)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    tokenizer = write_tokenizer(out, model_config.text.context_length)
    size = model_config.vision.image_size
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    transformers.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(out))
    record = {
        "format": config.format,
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint)},
        "transformers": transformers.__version__,
        "model": model_config.to_dict(),
        **training_facts(checkpoint),
    }
    record["evaluations"] = evaluations_beside(checkpoint, record["checkpoint"]["sha256"])
    (out / "README.md").write_text(model_card(record))
    atomic_write_json(out / "cocu_export.json", record)
    return record
