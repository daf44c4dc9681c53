"""`specllm.flags` and infer's flag columns: every bit on real files (a tiny model with a fitted domain check)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from specllm import flags
from specllm.config import CleanConfig, DomainConfig, GridConfig, InferConfig, IngestConfig, SplitConfig

from .llmfactory import tiny_llama_dir, tiny_train_options, write_qa

DR7 = "lamost/dr7/spectra/spec-58575-HD103621N361936B01_sp03-{}.fits.gz"


def test_combine_sets_bits_in_order():
    assert flags.combine() == (0, "")
    value, reason = flags.combine(objclass="GALAXY", snr_reason="low SNR", partial=True, untrained=True, domain=True)
    assert value == 31 and reason == "not_star;low SNR;partial;class;domain"
    assert flags.combine(objclass="STAR", snr_reason="no SNR") == (2, "no SNR")
    assert flags.combine(objclass="Unknown", domain=True) == (17, "not_star;domain")
    assert (
        flags.keywords(17) == ["not_star", "domain"] and flags.has(8, flags.CLASS) and not flags.has(None, flags.CLASS)
    )
    assert [f.value for f in flags.FLAGS] == [1, 2, 4, 8, 16, 32]
    assert flags.combine(uncertain=True, header=False) == (32, "uncertain;no header")
    assert flags.combine(partial=True, header=False) == (4, "partial;no header")
    assert flags.usable("ok", 0) and flags.usable("ok", 4) and not flags.usable("ok", 36)
    assert not flags.usable("ok", 16) and not flags.usable("poor coverage", 0) and not flags.usable("ok", None)
    assert flags.keyword_counts(
        [0, 2, 18, None, 34], [None, "no SNR", "low SNR;domain", None, "low SNR;uncertain"]
    ) == {
        "no SNR": 1,
        "low SNR": 2,
        "domain": 1,
        "uncertain": 1,
    }
    table = flags.markdown_table()
    assert all(f.keyword in table for f in flags.FLAGS) and "`no SNR`" in table


def test_untrained_class():
    trained = ("A", "F", "G")
    assert flags.untrained_class("K", "G", 0.99, trained, 0.5)
    assert flags.untrained_class(None, "M", 0.99, trained, 0.5)
    assert flags.untrained_class("G", "G", 0.4, trained, 0.5)
    assert not flags.untrained_class("G", "F", 0.9, trained, 0.5)
    assert not flags.untrained_class("K", "G", 0.9, None, 0.5)  # trained classes unknown: only the probability


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny stage-1 patch model trained on synthetic A/F/G spectra, with its domain check fitted on its data."""
    from specllm.fitdomain import fit_model_domain
    from specllm.train import run_train

    root = tmp_path_factory.mktemp("flags")
    data = write_qa(root / "qa", "patch", n=24, grid=GridConfig().size, test_every=8)
    options = tiny_train_options(data, root / "run", tiny_llama_dir(root))
    run_train(options)
    domain = fit_model_domain(
        str(data), str(root / "run"), DomainConfig(components=4, neighbours=2), SplitConfig(val_fraction=0.3)
    )
    assert (root / "run" / "model" / "domain.safetensors").exists() and (
        root / "run" / "model" / "domain.json"
    ).exists()
    assert domain.trained_classes == ["A", "F", "G"] and domain.info["train_spectra"] == 21
    return root / "run"


def test_every_bit_on_real_files(tmp_path, tiny_model, shared_data):
    from specllm.infer import run_infer

    npz = np.load(shared_data / "miles" / "miles_984stars_fwhm2.5A.npz")
    miles = tmp_path / "miles-two.npz"
    np.savez(miles, **{k: (npz[k][:2] if npz[k].ndim and len(npz[k]) == 984 else npz[k]) for k in npz.files})
    inputs = [str(shared_data / DR7.format(s)) for s in ("002", "008", "039", "045")] + [str(miles)]
    out = tmp_path / "labels.parquet"
    run_infer(inputs, str(tiny_model), str(out), InferConfig())
    rows = {r["spec_id"] if "miles" in r["file"] else r["file"][-12:-8]: r for r in pq.read_table(out).to_pylist()}
    k5, galaxy, faint, unknown = rows["-002"], rows["-008"], rows["-039"], rows["-045"]
    # header facts carried through; numbers given although flagged
    assert k5["subclass"] == "K5" and k5["objclass"] == "STAR" and k5["snrr"] > 2 and k5["z"] is not None
    assert galaxy["objclass"] == "GALAXY" and galaxy["z"] == pytest.approx(0.1226, abs=1e-3)
    for r in rows.values():
        assert r["status"] == "ok" and np.isfinite(r["teff"]) and 0 < r["class_prob"] <= 1
        words = ";".join(flags.keywords(r["flag"])).replace("low SNR", _snr_word(r))
        assert r["flag_reason"] == (";".join([*filter(None, [words]), "no header"]) if "miles" in r["file"] else words)
        assert r["usable"] == flags.usable(r["status"], r["flag"])
    assert flags.has(k5["flag"], flags.CLASS) and "class" in k5["flag_reason"]  # SUBCLASS K5: not trained on
    assert flags.has(galaxy["flag"], flags.NOT_STAR) and flags.has(unknown["flag"], flags.NOT_STAR)
    assert flags.has(faint["flag"], flags.SNR) and "low SNR" in faint["flag_reason"].split(";")
    assert not flags.has(k5["flag"], flags.SNR) and not flags.has(k5["flag"], flags.PARTIAL)
    for sid in ("miles-0001", "miles-0002"):
        assert flags.has(rows[sid]["flag"], flags.PARTIAL) and rows[sid]["objclass"] is None
    for r in rows.values():  # the domain bit is the stored threshold (or the label range) applied to the score
        assert r["domain_score"] > 0 and (r["domain_score"] <= 1 or flags.has(r["flag"], flags.DOMAIN))


def test_domain_bit_follows_the_stored_threshold(tmp_path, tiny_model, shared_data):
    import json
    import shutil

    from specllm.infer import run_infer

    model = tmp_path / "model"
    shutil.copytree(tiny_model / "model", model)
    meta = json.loads((model / "domain.json").read_text())
    files = [str(shared_data / DR7.format(s)) for s in ("002", "011")]
    for threshold, expect in ((1e-9, True), (1e9, False)):
        meta.update(
            threshold=threshold, residual_threshold=threshold, label_min=[-1e9] * 3, label_max=[1e9] * 3, error_max={}
        )
        if meta.get("index_threshold"):  # the band-index part (flux features) follows the same threshold
            meta.update(index_threshold=threshold, score_scale=1.0)
        (model / "domain.json").write_text(json.dumps(meta))
        run_infer(files, str(model), str(tmp_path / "x.parquet"), InferConfig())
        for r in pq.read_table(tmp_path / "x.parquet").to_pylist():
            assert flags.has(r["flag"], flags.DOMAIN) == expect and ("domain" in r["flag_reason"]) == expect


def _snr_word(row) -> str:
    return next((w for w in flags.SNR_REASONS if w in (row["flag_reason"] or "").split(";")), "low SNR")


def test_snr_flag_matches_ingest_rejection(tmp_path, tiny_model, shared_data):
    """Every file ingest rejects for SNR is flagged by infer with the same reason, under the same options."""
    from specllm.infer import run_infer
    from specllm.ingest import run_ingest

    files = [str(shared_data / DR7.format(s)) for s in ("039", "045", "002")]
    for cut in (2.0, 60.0):
        clean = CleanConfig(snr_min_r=cut, snr_min_i=cut)
        run_ingest(files, str(tmp_path / f"shards{cut}"), None, IngestConfig(clean=clean))
        rejects = {
            r["file"]: r["reason"] for r in pq.read_table(tmp_path / f"shards{cut}" / "rejects.parquet").to_pylist()
        }
        out = tmp_path / f"labels{cut}.parquet"
        run_infer(files, str(tiny_model), str(out), InferConfig(clean=clean))
        got = {r["file"]: r for r in pq.read_table(out).to_pylist()}
        snr_rejected = {f for f, reason in rejects.items() if reason in flags.SNR_REASONS}
        assert snr_rejected == {f for f, r in got.items() if flags.has(r["flag"], flags.SNR)}
        for f in snr_rejected:
            assert rejects[f] in got[f]["flag_reason"].split(";")
        assert len(snr_rejected) == (2 if cut == 2.0 else 3)


@pytest.mark.slow
def test_shipped_model_flags_real_non_afg_spectra(tmp_path, shared_data):
    """The issue's examples: K5, dM0, gM0 (DR7), M0 (DR1), a galaxy and a faint Unknown are all flagged."""
    from specllm.domain import load_domain
    from specllm.infer import run_infer
    from specllm.predict import default_model_dir

    if load_domain(default_model_dir()) is None:
        pytest.skip("the shipped model has no domain check in this checkout")
    files = [str(shared_data / DR7.format(s)) for s in ("002", "011", "063", "008", "039", "045")]
    files.append(str(shared_data / "lamost/dr1/spectra/spec-55862-B6212_sp06-005.fits.gz"))
    out = tmp_path / "labels.parquet"
    run_infer(files, None, str(out), InferConfig())
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len(files)
    for r in rows:
        assert r["flag"] > 0 and r["flag_reason"] and np.isfinite(r["teff"]) and r["domain_score"] > 0
    by_end = {r["file"][-12:-8]: r for r in rows}
    for star in ("-002", "-011", "-063", "-005"):
        assert flags.has(by_end[star]["flag"], flags.CLASS)
    assert flags.has(by_end["-008"]["flag"], flags.NOT_STAR) and "low SNR" in by_end["-039"]["flag_reason"]


def test_same_flags_from_a_path_a_spectrum_and_the_cli(tmp_path, tiny_model, shared_data):
    """A galaxy, a K5 dwarf, a faint and an Unknown spectrum: the same flag through infer, predict(path) and
    predict(Spectrum.read(path)); arrays without a header say `no header` and get only the model's own bits."""
    pytest.importorskip("specutils")
    from specutils import Spectrum

    import specllm
    import specllm.io.specutils_reader  # noqa: F401  (registers the LAMOST reader)
    from specllm.infer import run_infer
    from specllm.io import read_spectrum

    files = [str(shared_data / DR7.format(s)) for s in ("002", "008", "039", "045")]
    run_infer(files, str(tiny_model), str(tmp_path / "cli.parquet"), InferConfig())
    cli = pq.read_table(tmp_path / "cli.parquet").to_pylist()
    model = specllm.load_model(tiny_model)
    by_path = model.predict(files)
    by_spectrum = model.predict([Spectrum.read(f, format="LAMOST-LRS") for f in files])
    for name in ("flag", "flag_reason", "usable", "objclass", "subclass"):
        assert [r[name] for r in cli] == list(by_path[name]) == list(by_spectrum[name]), name
    assert all(r["flag"] & (flags.NOT_STAR.value | flags.CLASS.value | flags.SNR.value) for r in cli)
    raw = read_spectrum(files[1])  # the galaxy, as bare arrays
    bare = model.predict((raw.wave, raw.flux, raw.ivar))
    assert bare["flag_reason"][0].endswith("no header") and not flags.has(bare["flag"][0], flags.NOT_STAR)
    told = model.predict({"wave": raw.wave, "flux": raw.flux, "ivar": raw.ivar, "objclass": "GALAXY"})
    assert flags.has(told["flag"][0], flags.NOT_STAR) and "no header" not in told["flag_reason"][0]


def test_fit_domain_command(tmp_path, tiny_model):
    """`specllm fit-domain SHARDS MODEL` with options from DomainConfig writes the check into the model."""
    import json
    import shutil

    from typer.testing import CliRunner

    from specllm.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_model, run)
    (run / "model" / "domain.json").unlink()
    args = ["fit-domain", str(tiny_model.parent / "qa"), str(run), "--components", "3", "--neighbours", "2"]
    result = CliRunner().invoke(app, [*args, "--uncertain-quantile", "0.5"])
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "model" / "domain.json").read_text())
    assert meta["features"] == "flux" and meta["info"]["config"]["components"] == 3 and meta["neighbours"] == 2
    assert set(meta["error_max"]) == {"teff", "logg", "feh"} and meta["residual_threshold"] > 0
    bad = CliRunner().invoke(app, ["fit-domain", str(tmp_path / "none"), str(run)])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
