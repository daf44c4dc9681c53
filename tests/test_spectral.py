"""`specllm.spectral`: the shared prompt prefix is run once per batch with the same result; the beta-NLL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specllm.config import GridConfig
from specllm.prompting import PromptBuilder
from specllm.runs import load_model_dir
from specllm.train import load_qa


@pytest.fixture(scope="module")
def model_and_batch(tiny_run):
    model, spec, tokenizer = load_model_dir(tiny_run)
    model.eval()
    data = load_qa(str(tiny_run.parent / "qa"), 1)
    builder = PromptBuilder(tokenizer, -(-GridConfig().size // spec.patch_width))
    encoded = [builder.encode(q, a) for q, a in zip(data.question, data.answer)]
    z = (data.values - np.asarray(spec.value_mean)) / np.asarray(spec.value_std)
    batch = builder.collate(encoded, data.flux, data.mask, z, data.classes)
    return model, builder, batch


def test_shared_prefix_gives_the_losses_of_full_rows(model_and_batch):
    model, builder, batch = model_and_batch
    assert batch.prefix_len > 0 and batch.attention_mask[:, 0].all()  # right-padded: every row starts at 0
    with torch.no_grad():
        shared = model(batch, 1.0, 1.0, 0.2)
        batch.prefix_len, saved = 0, batch.prefix_len
        full = model(batch, 1.0, 1.0, 0.2)
        batch.prefix_len = saved
    for name in full[1]:
        assert shared[1][name] == pytest.approx(full[1][name], rel=1e-4, abs=1e-5), name
    torch.testing.assert_close(shared[2][0], full[2][0], rtol=1e-4, atol=1e-4)


def test_shared_prefix_passes_gradients_to_the_adapter(tiny_run):
    from specllm.runs import ModelSpec, build_model, model_dir

    spec = ModelSpec.from_json(model_dir(tiny_run) / "spec.json")
    grads = []
    data = load_qa(str(tiny_run.parent / "qa"), 1)
    for share in (True, False):
        torch.manual_seed(0)
        model, tokenizer = build_model(spec)
        model.eval()  # no dropout: both passes see the same function
        builder = PromptBuilder(tokenizer, -(-GridConfig().size // spec.patch_width))
        encoded = [builder.encode(q, a) for q, a in zip(data.question, data.answer)]
        z = (data.values - np.asarray(spec.value_mean)) / np.asarray(spec.value_std)
        batch = builder.collate(encoded, data.flux, data.mask, z, data.classes)
        if not share:
            batch.prefix_len = 0
        loss, _, _ = model(batch, 1.0, 1.0, 0.2)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-6)


def test_beta_nll_weights_each_example_by_its_variance(model_and_batch):
    model, _, batch = model_and_batch
    with torch.no_grad():
        _, plain, (mean, log_var, _) = model(batch, 0.0, 1.0, 0.0)
        _, beta, _ = model(batch, 0.0, 1.0, 0.0, nll_beta=0.5)
    target = batch.values
    known = ~torch.isnan(target)
    nll = 0.5 * (log_var + (torch.nan_to_num(target) - mean) ** 2 * torch.exp(-log_var) + math.log(2 * math.pi))
    assert plain["value"] == pytest.approx(float(nll[known].mean()), rel=1e-5)
    expected = float((nll * torch.exp(0.5 * log_var))[known].sum() / known.sum())
    assert beta["value"] == pytest.approx(expected, rel=1e-5)


def test_conv_stem_starts_as_the_mlp_and_learns_line_depths_across_patches():
    """The conv stem's projection starts at zero (the tokens are the MLP's), its one position per patch lines up
    with the patches, unobserved pixels do not reach it, and a gradient reaches its first convolution."""
    from specllm.spectral import PatchEmbedder

    torch.manual_seed(0)
    mlp = PatchEmbedder(200, 32, 8)
    torch.manual_seed(0)
    conv = PatchEmbedder(200, 32, 8, stem="conv")
    flux = torch.rand(3, 200)
    mask = torch.zeros(3, 200, dtype=torch.bool)
    assert torch.equal(mlp(flux, mask), conv(flux, mask))
    torch.nn.init.normal_(conv.conv_proj.weight)
    out = conv(flux, mask)
    assert out.shape == (3, 7, 8)
    masked = mask.clone()
    masked[:, 40:60] = True
    changed = flux.clone()
    changed[:, 40:60] = 5.0  # what a masked pixel holds does not matter
    assert torch.allclose(conv(flux, masked), conv(changed, masked))
    out.sum().backward()
    assert conv.conv[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of 16"):
        PatchEmbedder(200, 24, 8, stem="conv")
