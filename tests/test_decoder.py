"""`specllm.decoder` computes what transformers' LlamaModel computes (the read-out's path at inference)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from specllm.decoder import load_decoder, unsupported

from .llmfactory import tiny_llama_config

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def tiny_llama(tmp_path, rope_scaling=None, layers: int = 3):
    """(transformers' model, its directory): a random 3-layer Llama with grouped-query attention."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    kwargs = {"rope_scaling": rope_scaling, "rope_theta": 500000.0} if rope_scaling else {}
    config = tiny_llama_config(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        max_position_embeddings=256,
        **kwargs,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model, tmp_path


def left_padded(batch: int = 3, length: int = 20, hidden: int = 64):
    torch.manual_seed(1)
    embeds = torch.randn(batch, length, hidden)
    attention = torch.ones(batch, length, dtype=torch.long)
    attention[1, :5] = 0  # a shorter row, padded on the left as `PromptBuilder.collate` pads for inference
    return embeds, attention, (attention.cumsum(-1) - 1).clamp_min(0)


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE], ids=["default-rope", "llama3-rope"])
def test_same_hidden_states_as_transformers(tmp_path, rope):
    reference, path = tiny_llama(tmp_path, rope)
    ours = load_decoder(path)
    assert ours is not None and len(ours.model.layers) == 3
    embeds, attention, positions = left_padded()
    with torch.no_grad():
        want = reference.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
        got = ours.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
    real = attention.bool()  # padding positions carry nothing anyone reads
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    # and under bf16 autocast, as `predict` runs it
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
        got = ours.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-2, rtol=1e-2)


def test_shared_prefix_through_the_cache(tmp_path):
    """The prefix run once and repeated over the batch (`SpectralLM.hidden_states`) equals running every row whole."""
    reference, path = tiny_llama(tmp_path)
    ours = load_decoder(path)
    embeds, _, _ = left_padded()
    p = 6
    embeds[:, :p] = embeds[:1, :p]
    attention = torch.ones(embeds.shape[:2], dtype=torch.long)
    positions = attention.cumsum(-1) - 1
    with torch.no_grad():
        head = ours.model(inputs_embeds=embeds[:1, :p], position_ids=positions[:1, :p], use_cache=True)
        cache = head.past_key_values
        cache.batch_repeat_interleave(embeds.shape[0])
        got = ours.model(
            inputs_embeds=embeds[:, p:], attention_mask=attention, position_ids=positions[:, p:], past_key_values=cache
        ).last_hidden_state
        whole = reference.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
    torch.testing.assert_close(got, whole.last_hidden_state[:, p:], atol=1e-5, rtol=1e-5)


def test_first_layers_only_and_tied_embeddings_under_the_head_name(tmp_path):
    """A base cut to its first layers reads only those; embeddings tied and stored as `lm_head.weight` (as
    safetensors' save_model keeps them for the embedded model) are found."""
    reference, path = tiny_llama(tmp_path)
    state = load_file(path / "model.safetensors")
    state["lm_head.weight"] = state.pop("model.embed_tokens.weight")
    save_file(state, path / "model.safetensors")
    ours = load_decoder(path, layers=2)
    assert len(ours.model.layers) == 2
    reference.model.layers = reference.model.layers[:2]
    embeds, attention, positions = left_padded()
    with torch.no_grad():
        want = reference.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
        got = ours.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions)
    real = attention.bool()
    torch.testing.assert_close(got.last_hidden_state[real], want.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[3, 7, 11]])
    torch.testing.assert_close(ours.get_input_embeddings()(ids), reference.get_input_embeddings()(ids))


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"attention_bias": True}, "biases"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_type"),
    ],
)
def test_what_it_does_not_cover_is_left_to_transformers(tmp_path, change, reason):
    _, path = tiny_llama(tmp_path)
    config = json.loads((path / "config.json").read_text()) | change
    assert reason in unsupported(config)
    (path / "config.json").write_text(json.dumps(config))
    assert load_decoder(path) is None


def test_a_checkpoint_named_otherwise_is_left_to_transformers(tmp_path):
    _, path = tiny_llama(tmp_path)
    state = {k.replace("model.layers.", "model.blocks."): v for k, v in load_file(path / "model.safetensors").items()}
    save_file(state, path / "model.safetensors")
    assert load_decoder(path) is None
