"""`specllm.predict`: constrained decoding always parses, the read-out's hidden state, Table-2 residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specllm.config import GridConfig, InferConfig
from specllm.device import autocast
from specllm.predict import (
    ANSWER_CHARACTERS,
    answer_vocabulary,
    default_model_dir,
    load_for_inference,
    predict,
    questions_for,
    residual_table,
)
from specllm.qa import parse_answer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tiny_run):
    (m,) = load_for_inference(tiny_run, CPU)
    return m


def spectra(n: int, seed: int = 3):
    flux = np.random.default_rng(seed).uniform(0.2, 1.0, (n, GridConfig().size)).astype(np.float32)
    return flux, np.zeros_like(flux, dtype=bool)


def test_constrained_decoding_always_parses(loaded):
    flux, mask = spectra(5)
    config = InferConfig(decode="text", max_new_tokens=40)
    preds = predict(
        loaded.model, loaded.spec, loaded.builder, questions_for(loaded.spec, flux), flux, mask, CPU, config
    )
    assert preds.ok.all(), preds.texts
    for text in preds.texts:
        assert parse_answer(loaded.spec.format, loaded.spec.stage, text)[1]
    # the answer vocabulary is built once per tokenizer and kept here, not on the prompt builder
    tok = loaded.builder.tokenizer
    ids, texts = answer_vocabulary(tok)
    assert answer_vocabulary(tok)[0] is ids and not hasattr(loaded.builder, "_vocab")
    assert len(ids) == len(texts) > 0 and all(set(t) <= ANSWER_CHARACTERS for t in texts)


def test_hidden_state_is_what_the_readout_saw(loaded):
    flux, mask = spectra(3, seed=5)
    questions = questions_for(loaded.spec, flux)
    plain = predict(loaded.model, loaded.spec, loaded.builder, questions, flux, mask, CPU)
    assert plain.hidden is None
    preds = predict(
        loaded.model, loaded.spec, loaded.builder, questions, flux, mask, CPU, InferConfig(batch_size=2), True
    )
    assert preds.hidden.shape == (3, loaded.model.lm.config.hidden_size)
    np.testing.assert_allclose(preds.values, plain.values, rtol=1e-5)
    with torch.no_grad(), autocast(CPU, True):
        mu, _, logits = loaded.model.readout(torch.from_numpy(preds.hidden))
    spec = loaded.spec
    again = mu.float().numpy() * np.asarray(spec.value_std) + np.asarray(spec.value_mean)
    np.testing.assert_allclose(again, preds.values, rtol=1e-2)
    assert [spec.classes[k] for k in logits.argmax(-1).tolist()] == preds.classes


def test_residual_table_per_class_and_overall():
    labels = np.array([[5000.0], [6000.0], [4000.0], [np.nan]])
    values = np.array([[5100.0], [5900.0], [4300.0], [4500.0]])
    errors = np.array([[150.0], [50.0], [400.0], [10.0]])
    table = residual_table(values, errors, labels, ["G", "G", "K", "K"], ["teff"])["teff"]
    assert set(table) == {"G", "K", "all"}
    assert table["G"] == {"n": 2, "mu": 0.0, "sigma": 100.0, "sigma_mad": pytest.approx(148.26), "within_1sigma": 0.5}
    assert table["K"]["n"] == 1 and table["K"]["mu"] == 300.0
    assert table["all"]["n"] == 3 and table["all"]["mu"] == pytest.approx(100.0)
    assert table["all"]["within_1sigma"] == pytest.approx(2 / 3)


def test_default_model_dir_is_inside_the_package():
    import specllm

    path = default_model_dir()
    assert path.parent.name == "models" and path.parent.parent.samefile(specllm.__path__[0])
