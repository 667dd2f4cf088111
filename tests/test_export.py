"""`cocu-train export --format transformers`: transformers' GroupViTModel computes what cocu's GroupViT computes.

Nothing is trained: a randomly initialised stem-less GroupViT (two grouping stages) is exported, loaded back with
``transformers.GroupViTModel.from_pretrained`` and its tokenizer and processor with ``CLIPTokenizer`` and
``AutoProcessor``; image embeddings, text embeddings and segmentation logits agree with cocu's for the same inputs.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from testkit import save_random_groupvit
from typer.testing import CliRunner

from cocu.cli.export import app
from cocu.evaluation.inference import resize_bilinear
from cocu.training.checkpoint import load_groupvit
from cocu.training.export import GROUPVIT_SINCE, ExportError, require_transformers
from cocu.training.text import tokenize

transformers = pytest.importorskip("transformers")
runner = CliRunner()
PROMPTS = ["a photo of a dog.", "grass", "a photo of the small sky over a red house, seen from far away."]


def cocu_outputs(model, images, tokens):
    """Image and text embeddings, and segmentation logits as transformers defines them, from cocu's model."""
    image = model.encode_image(images)
    text = model.encode_text(tokens)
    feats = model.group_features(images)
    scale = model.logit_scale_value()
    grouping = resize_bilinear(feats.attn, tuple(images.shape[-2:]))  # [B, G, H, W]
    group_logits = scale * feats.group_embeds @ text.t()  # [B, G, T]
    return image, text, scale * torch.einsum("bgt,bghw->bthw", group_logits, grouping)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    checkpoint = save_random_groupvit(root / "run" / "checkpoints" / "last.ckpt", "groupvit-test", global_step=7)
    out = root / "hf"
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--format", "transformers", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return checkpoint, out, result.output


def test_the_folder_loads_with_transformers_and_agrees_with_cocu(exported):
    checkpoint, out, _ = exported
    model, config = load_groupvit(checkpoint)
    hf = transformers.GroupViTModel.from_pretrained(out).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(out)
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.vocab_size == tokenizer.vocab_size == 49408
    context = config.text.context_length
    ours = tokenize(PROMPTS, context)
    theirs = tokenizer(PROMPTS, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    ends = ours.argmax(dim=-1)
    for row, end in enumerate(ends.tolist()):  # same BPE ids up to <end> (cocu pads with 0, transformers with <end>)
        assert theirs.input_ids[row, : end + 1].tolist() == ours[row, : end + 1].tolist()
    torch.manual_seed(1)
    images = torch.randn(2, 3, config.vision.image_size, config.vision.image_size)
    figures = {}
    for dtype in (torch.float32, torch.float64):
        model, hf = model.to(dtype), hf.to(dtype)
        with torch.no_grad():
            image, text, seg = cocu_outputs(model, images.to(dtype), ours)
            got = hf(
                input_ids=theirs.input_ids,
                attention_mask=theirs.attention_mask,
                pixel_values=images.to(dtype),
                output_segmentation=True,
            )
        assert got.segmentation_logits.shape == seg.shape == (2, len(PROMPTS), *images.shape[-2:])
        figures[str(dtype)] = [
            float((a - b).abs().max())
            for a, b in ((image, got.image_embeds), (text, got.text_embeds), (seg, got.segmentation_logits))
        ]
    print("max abs diff (image embeds, text embeds, seg logits):", json.dumps(figures))
    assert max(figures["torch.float64"]) < 1e-10
    assert max(figures["torch.float32"][:2]) < 1e-5
    assert figures["torch.float32"][2] < 1e-5 * float(model.logit_scale_value().detach()) ** 2  # logits scale with s^2


def test_the_model_card_records_the_run(exported):
    checkpoint, out, output = exported
    card = (out / "README.md").read_text()
    assert "groupvit-test" in card and "| steps | 7" in card and "None: no `cocu-eval seg`" in card
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert output.strip().count("\n") == 0 and str(out) in output


def test_a_conv_stem_config_is_refused_in_one_line(tmp_path):
    checkpoint = save_random_groupvit(tmp_path / "cpu.ckpt", "groupvit-cpu")
    result = runner.invoke(app, ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "vision.conv_stem=True" in result.output, result.output
    assert str(checkpoint) in result.output and not (tmp_path / "hf").exists()


def test_a_transformers_without_groupvit_is_named_with_the_version_that_has_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(__version__="4.20.1"))
    with pytest.raises(
        ExportError, match=f"transformers 4.20.1 has no GroupViT; install transformers {GROUPVIT_SINCE}"
    ):
        require_transformers()
