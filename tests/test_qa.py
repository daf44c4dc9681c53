"""specllm.qa: question/answer text in the three formats, the answer grammar and its parqa."""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from specllm import qa
from specllm.config import CLASSES, FORMATS, STAGE1_LABELS, STAGE2_ELEMENTS, SerializeConfig
from specllm.qa import answer, answer_pattern, parse_answer, question

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
    asked = qa.asked_labels(1, labels)
    assert asked == ["teff"]
    q = question("paper", 1, np.array([0.5, 1.0]), asked)
    assert "effective temperature" in q and "class" not in q and "gravity" not in q and "metallicity" not in q
    assert answer("paper", 1, labels) == "[ ' 5 0 0 0 . 0 0 ' ]"
    assert question("compact", 1, np.array([0.5]), asked).count("Give teff.") == 1
    assert qa.asked_labels(1, {"class": "B", "teff": None}) == []  # B is not one of the paper's classes
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
        np.rint(qa.flux_from_question("compact", q) * 1000), np.rint(flux.astype(np.float64) * 1000)
    )
    np.testing.assert_allclose(qa.flux_from_question("paper", question("paper", 1, flux, ["teff"])), flux, atol=5e-4)
    assert len(q) < len(question("paper", 1, flux, ["class", "teff"])) * 0.7


def test_patch_question_has_an_empty_flux_span():
    q = question("patch", 1, None, ["class", "teff", "logg", "feh"])
    assert q.endswith("<flux></flux>") and q.count(qa.FLUX_SPAN) == 1
    assert q == question("patch", 1, np.ones(4901), ["class", "teff", "logg", "feh"])  # the flux is not in the text
    assert qa.flux_from_question("patch", q) is None
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
        asked = qa.asked_labels(stage, labels)
        text = answer(fmt, stage, labels)
        assert pattern.fullmatch(text), text
        values, ok = parse_answer(fmt, stage, text, asked=asked)
        assert ok, text
        values_no_asked, ok2 = parse_answer(fmt, stage, text)
        for key in qa.label_keys(stage):
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
    assert parse_answer("compact", 1, text, asked=["class", "teff"]) == (dict.fromkeys(qa.STAGE1_KEYS), False)
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
        assert set(values) == set(qa.label_keys(stage))


def test_parser_surrounding_whitespace_and_non_strings():
    assert parse_answer("compact", 1, "  G 5615 \n")[1]
    for junk in (None, 3.5, b"G 5615", ["G"]):
        assert parse_answer("compact", 1, junk) == (dict.fromkeys(qa.STAGE1_KEYS), False)


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
            keys = qa.label_keys(stage)
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
        assert isinstance(ok, bool) and set(values) == set(qa.label_keys(stage))

    check()


def test_answer_pattern_has_no_anchors_or_lookarounds():
    for fmt in FORMATS:
        for stage in (1, 2):
            p = answer_pattern(fmt, stage)
            assert not any(tok in p for tok in ("(?=", "(?!", "(?<", "^", "$", "\\1"))
            re.compile(p)


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


def test_answer_numbers_are_bounded_so_constrained_decoding_ends():
    import re

    from specllm.qa import MAX_INTEGER_DIGITS, answer_pattern

    pattern = re.compile(answer_pattern("compact", 1))
    assert pattern.fullmatch("A 123456 4.10 -0.20")
    assert not pattern.fullmatch("A " + "1" * (MAX_INTEGER_DIGITS + 1) + " 4.10 -0.20")
