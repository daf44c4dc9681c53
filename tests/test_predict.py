"""`specllm.predict`: constrained decoding always parses, the read-out's hidden state, Table-2 residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specllm.config import GridConfig, InferConfig
from specllm.device import autocast
from specllm.errors import SpecllmError
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
    """Loaded as for `--decode text`: transformers' model and the tokenizer."""
    (m,) = load_for_inference(tiny_run, CPU, "text")
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


def test_merged_adapter_predicts_what_the_peft_model_predicts(tiny_run, monkeypatch):
    import specllm.predict
    from specllm.runs import load_model_dir

    # In full precision: the merge is exact algebra (W + alpha/r B A); under bf16 autocast, on a CPU with bf16
    # kernels, W + BA and W x + B A x round differently (tens of K on this tiny, high-learning-rate model).
    monkeypatch.setattr(specllm.predict, "autocast", lambda device, bf16: torch.autocast(device.type, enabled=False))

    flux, mask = spectra(4, seed=11)
    out = []
    for merge in (False, True):
        model, spec, tokenizer = load_model_dir(tiny_run, merge=merge)
        from specllm.prompting import PromptBuilder

        builder = PromptBuilder(tokenizer, -(-GridConfig().size // spec.patch_width))
        out.append(predict(model, spec, builder, questions_for(spec, flux), flux, mask, CPU))
        assert hasattr(model.lm, "get_base_model") != merge  # merged: a plain causal LM, no PEFT wrapper
    np.testing.assert_allclose(out[0].values, out[1].values, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[0].errors, out[1].errors, rtol=1e-4)


def test_the_read_out_loads_lean_and_labels_as_transformers_does(tiny_run, loaded):
    """`--decode head` (the default) runs the base on `specllm.decoder` and asks the question whose token ids
    training recorded in spec.json (no tokenizer): the same labels as transformers' model with the tokenizer."""
    from specllm.decoder import CausalLM

    (lean,) = load_for_inference(tiny_run, CPU)
    assert isinstance(lean.model.lm, CausalLM) and lean.builder.tokenizer is None
    assert lean.spec.prompt["question"] == questions_for(lean.spec, np.zeros((1, 1)))[0]
    assert lean.builder.prompt_ids(lean.spec.prompt["question"]) == loaded.builder.prompt_ids(
        lean.spec.prompt["question"]
    )
    flux, mask = spectra(5, seed=13)
    questions = questions_for(lean.spec, flux)
    got = predict(lean.model, lean.spec, lean.builder, questions, flux, mask, CPU, InferConfig(batch_size=2))
    want = predict(loaded.model, loaded.spec, loaded.builder, questions, flux, mask, CPU, InferConfig(batch_size=2))
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5)
    np.testing.assert_allclose(got.errors, want.errors, rtol=1e-5)
    assert got.classes == want.classes and got.texts == want.texts
    with pytest.raises(SpecllmError, match="no tokenizer"):
        lean.builder.prompt_ids("another question <flux></flux>")


def test_the_read_out_starts_without_transformers(tiny_run):
    """What makes `infer` start fast: labelling through the read-out imports neither transformers nor peft."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, torch\n"
        "from specllm.predict import load_for_inference, predict, questions_for\n"
        f"(m,) = load_for_inference({str(tiny_run)!r}, torch.device('cpu'))\n"
        "flux = np.full((2, m.spec.grid_size), 0.5, np.float32)\n"
        "p = predict(m.model, m.spec, m.builder, questions_for(m.spec, flux), flux, np.zeros(flux.shape, bool), torch.device('cpu'))\n"
        "assert p.ok.all()\n"
        "print(sorted(k for k in ('transformers', 'peft', 'tokenizers') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_spec_without_recorded_prompt_loads_the_tokenizer(tiny_run, tmp_path):
    """A model directory from before prompts were recorded still loads lean where it can, with its tokenizer."""
    import json
    import shutil

    from specllm.runs import SPEC

    model = shutil.copytree(tiny_run / "model", tmp_path / "model")
    data = json.loads((model / SPEC).read_text())
    del data["prompt"]
    (model / SPEC).write_text(json.dumps(data))
    (m,) = load_for_inference(model, CPU)
    assert m.builder.tokenizer is not None and m.spec.prompt is None
    data["prompt"] = {"question": "q", "before": [1, "2"], "after": [], "pad_id": 0}
    (model / SPEC).write_text(json.dumps(data))
    with pytest.raises(SpecllmError, match="'prompt' needs"):
        load_for_inference(model, CPU)


def test_calibration_puts_68_percent_within_one_sigma(loaded):
    from dataclasses import replace

    from specllm.predict import calibrate_errors, error_factors
    from specllm.train import QAData

    flux, mask = spectra(60, seed=7)
    spec = loaded.spec
    questions = questions_for(spec, flux)
    raw = predict(loaded.model, spec, loaded.builder, questions, flux, mask, CPU)
    rng = np.random.default_rng(0)
    labels = raw.values + rng.normal(0, 3, raw.values.shape) * raw.errors  # errors 3x too small
    data = QAData(
        np.array([f"s{i}" for i in range(60)]), np.array(["train"] * 60), questions, [""] * 60,
        np.full(60, -100), labels, list(spec.value_names), flux, mask, "patch",
    )  # fmt: skip
    scale = calibrate_errors(raw, data, spec)
    assert set(scale) == set(spec.value_names)
    for name in spec.value_names:
        assert 2.0 < scale[name]["all"] < 4.5
    calibrated = replace(spec, error_scale=scale)
    after = predict(loaded.model, calibrated, loaded.builder, questions, flux, mask, CPU)
    within = np.abs(after.values - labels) <= after.errors
    before = np.abs(raw.values - labels) <= raw.errors
    assert np.all(before.mean(0) < 0.45)  # errors 3x too small: ~26% within 1 sigma
    # 68.3% within each predicted class that has its own factor; the mix with the overall factor moves it a little
    assert np.all(np.abs(within.mean(0) - 0.683) < 0.07)
    assert error_factors(spec, [None, "A"]).tolist() == [[1.0] * len(spec.value_names)] * 2  # none stored: 1


def test_decode_text_is_refused_for_a_model_without_the_text_objective(loaded):
    from dataclasses import replace

    from specllm.predict import check_decode

    spec = replace(loaded.spec, manifest={**loaded.spec.manifest, "options": {"text_weight": 0.0}})
    check_decode([spec], InferConfig())  # the read-out is fine
    check_decode([loaded.spec], InferConfig(decode="text"))  # trained with text: fine
    with pytest.raises(SpecllmError, match="--decode head"):
        check_decode([spec], InferConfig(decode="text"))
