"""Question and answer text: spectra and labels written as language, and the one parser of answers.

Shared by `serialize` (which writes them into QA shards) and prediction (which asks the questions and reads the
answers back); it imports no model and no stage.

Three formats (config.FORMATS):

* ``paper`` - *Spectra as Language* section III.1: a question asking for the labels of a LAMOST low-resolution
  spectrum, ending in its normalised flux, 3 decimals joined by ", " inside ``<flux>...</flux>``; the answer with
  every character spaced, as in Gruver et al. 2023: stage 1 ``[ 'M',' 3 7 9 4 . 6 6 ',' 4 . 6 2 8 ',' - 0 . 0 2 9 ' ]``
  (class, Teff, log g, [Fe/H], decimals from config.STAGE1_LABELS), stage 2 ``[C_FE:' 0 . 1 5 1 ', N_FE:' ... ']``.
* ``compact`` - the same question in fewer words, the flux as integers in thousandths (``303 307 ...``: every value
  recoverable exactly, about 4 tokens a value instead of 7) and a short answer: stage 1 ``G 5615 4.45 -0.77`` (class,
  Teff in K as an integer, log g, [Fe/H] always signed), stage 2 ``c 0.15 mg -0.02`` ([X/Fe] named by the element
  alone: 84 tokens fewer than ``c_fe 0.15 mg_fe -0.02`` for the 21 elements).
* ``patch`` - the short question with an empty ``<flux></flux>`` span: the model splices one embedding per flux patch
  (config.PatchConfig) between the two tags, reading the spectrum from the ``flux`` and ``mask`` columns. The answer
  is the compact one.

Labels a star lacks are left out of its question and answer, as the paper does. `parse_answer` reads every format
back; malformed text gives None values and ok=False, never an exception. `answer_pattern` is a regular expression
matched (with `re.fullmatch`) by exactly the well-formed answers, for constrained decoding.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .config import FORMATS, GridConfig, SerializeConfig
from .errors import SpecllmError
from .labels import CLASSES, STAGE1_LABELS, STAGE1_NAMES, STAGE2_KEYS, clean_class, clean_number

CONFIG = SerializeConfig()
STAGES = (1, 2)
FLUX_OPEN, FLUX_CLOSE = "<flux>", "</flux>"
FLUX_SPAN = FLUX_OPEN + FLUX_CLOSE  # the empty span of `patch` questions, where the patch embeddings go

STAGE1_KEYS: tuple[str, ...] = ("class", *STAGE1_NAMES)
_STAGE1_DECIMALS = dict(STAGE1_LABELS)

_PAPER_NAMES = {
    "class": "spectral class",
    "teff": "effective temperature (Teff)",
    "logg": "surface gravity (log g)",
    "feh": "metallicity ([Fe/H])",
}


def label_keys(stage: int) -> tuple[str, ...]:
    """The labels of a stage, in answer order: class, teff, logg, feh; or c_fe, ci_fe, n_fe, ... (STAGE2_ELEMENTS)."""
    check_stage(stage)
    return STAGE1_KEYS if stage == 1 else STAGE2_KEYS


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise SpecllmError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check_stage(stage: int) -> None:
    if stage not in STAGES:
        raise SpecllmError(f"unknown stage {stage!r}; choose 1 (class, Teff, log g, [Fe/H]) or 2 ([X/Fe])")


# ---------------------------------------------------------------- label values


def clean_value(key: str, value) -> float | str | None:
    """A label as written into the text, or None where it is missing (None, NaN, inf, survey placeholder <= -9999,
    a class outside A/F/G/K/M)."""
    return clean_class(value) if key == "class" else clean_number(value)


def asked_labels(stage: int, labels: Mapping[str, object]) -> list[str]:
    """The labels of `labels` that are present (in answer order): those a star's question asks for."""
    return [k for k in label_keys(stage) if clean_value(k, labels.get(k)) is not None]


def _format_number(value: float, decimals: int, signed: bool = False) -> str:
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    if float(text) == 0.0:  # never '-0.000'
        text = f"{0.0:+.{decimals}f}" if signed else f"{0.0:.{decimals}f}"
    return text


def _value_spec(fmt: str, stage: int, key: str) -> tuple[int, bool]:
    """(decimals, always signed) of a numeric label in a format."""
    if fmt == "paper":
        return (_STAGE1_DECIMALS[key] if stage == 1 else CONFIG.stage2_decimals), False
    if key == "teff":
        return CONFIG.compact_teff_decimals, False
    return CONFIG.compact_decimals, key == "feh"  # [Fe/H] signed: tells a lone [Fe/H] from a lone log g


def _paper_key(key: str) -> str:
    return key.upper()  # c_fe -> C_FE, tiii_fe -> TIII_FE


def _compact_key(key: str) -> str:
    return key.removesuffix("_fe")  # c_fe -> c, tiii_fe -> tiii


def _ordered(stage: int, keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    unknown = [k for k in keys if k not in label_keys(stage)]
    if unknown:
        raise ValueError(f"not a stage-{stage} label: {', '.join(map(str, unknown))}")
    return [k for k in label_keys(stage) if k in keys]


# ---------------------------------------------------------------- question and answer text


def _join_words(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _grid_words(grid: GridConfig, angstrom: str) -> str:
    return f"{grid.start:g}-{grid.stop:g} {angstrom} at {grid.step:g} {angstrom}"


def flux_text(fmt: str, flux) -> str:
    """The flux as written inside <flux>...</flux>: '0.303, 0.307, ...' (paper) or '303 307 ...' (compact)."""
    values = np.asarray(flux, dtype=np.float64).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("flux is empty or has non-finite values")
    d = CONFIG.flux_decimals
    if fmt == "paper":
        return ", ".join(f"{x:.{d}f}" for x in (np.round(values, d) + 0.0).tolist())
    return " ".join(map(str, np.rint(values * 10**d).astype(np.int64).tolist()))


def question(
    fmt: str, stage: int, flux: np.ndarray | None, labels_present: list[str], grid: GridConfig = GridConfig()
) -> str:
    """The user's question for one star, asking for `labels_present` (the labels it has, see `asked_labels`)."""
    check_format(fmt)
    keys = _ordered(stage, labels_present)
    if not keys:
        raise ValueError("a question must ask for at least one label")
    if fmt == "patch":
        body = FLUX_SPAN
    elif flux is None:
        raise ValueError(f"format {fmt} writes the flux into the question: flux is required")
    else:
        body = FLUX_OPEN + flux_text(fmt, flux) + FLUX_CLOSE
    if fmt == "paper":
        if stage == 1:
            wanted = _join_words([_PAPER_NAMES[k] for k in keys])
        else:
            wanted = "abundance ratios " + _join_words([_paper_key(k) for k in keys])
        return (
            "The following is the normalized flux of a LAMOST low-resolution stellar spectrum, resampled to "
            f"{_grid_words(grid, 'Å')}. What are the {wanted} of this star? {body}"
        )
    scale = f", flux x{10**CONFIG.flux_decimals}" if fmt == "compact" else ""
    wanted = " ".join(keys) if stage == 1 else "[X/Fe] of " + " ".join(_compact_key(k) for k in keys)
    return f"LAMOST spectrum {_grid_words(grid, 'A')}{scale}. Give {wanted}. {body}"


def answer(fmt: str, stage: int, labels: Mapping[str, float | str | None]) -> str:
    """The assistant's answer: the labels present in `labels`, in answer order, written in the format's style."""
    check_format(fmt)
    values = {k: clean_value(k, labels.get(k)) for k in label_keys(stage)}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        raise ValueError(f"no stage-{stage} label to write")
    items = []
    for key, value in values.items():
        if key == "class":
            items.append(f"'{value}'" if fmt == "paper" else value)
            continue
        decimals, signed = _value_spec(fmt, stage, key)
        number = _format_number(value, decimals, signed)
        if fmt == "paper":
            spaced = "' " + " ".join(number) + " '"
            items.append(spaced if stage == 1 else f"{_paper_key(key)}:{spaced}")
        else:
            items.append(number if stage == 1 else f"{_compact_key(key)} {number}")
    if fmt == "paper":
        return "[ " + ",".join(items) + " ]" if stage == 1 else "[" + ", ".join(items) + "]"
    return " ".join(items)


# ---------------------------------------------------------------- the grammar of answers


MAX_INTEGER_DIGITS = 6  # no label has more (Teff < 10^6 K): a bounded answer, so constrained decoding ends


def _number_pattern(decimals: int, spaced: bool, signed: bool) -> str:
    """Numbers as `_format_number` writes them (no leading zeros, no '-0.00', at most `MAX_INTEGER_DIGITS` before
    the point), characters space-separated if spaced."""
    s = " " if spaced else ""
    bound = f"{{0,{MAX_INTEGER_DIGITS - 1}}}"
    more = f"(?:{s}\\d){bound}" if spaced else f"\\d{bound}"
    digits = f"(?:0|[1-9]{more})"
    frac = (f"{s}\\.{s}" + s.join(["\\d"] * decimals)) if decimals else ""
    if decimals:
        small = "|".join(s.join(["0"] * i + ["[1-9]"] + ["\\d"] * (decimals - i - 1)) for i in range(decimals))
        nonzero = f"(?:[1-9]{more}{frac}|0{s}\\.{s}(?:{small}))"
    else:
        nonzero = f"[1-9]{more}"
    negative = f"-{s}{nonzero}"
    return f"(?:\\+{digits}{frac}|{negative})" if signed else f"(?:{digits}{frac}|{negative})"


def _item_pattern(fmt: str, stage: int, key: str) -> str:
    if key == "class":
        letters = "[" + "".join(CLASSES) + "]"
        return f"'{letters}'" if fmt == "paper" else letters
    decimals, signed = _value_spec(fmt, stage, key)
    number = _number_pattern(decimals, fmt == "paper", signed)
    if fmt == "paper":
        return f"' {number} '" if stage == 1 else f"{_paper_key(key)}:' {number} '"
    return number if stage == 1 else f"{_compact_key(key)} {number}"


def _separator(fmt: str, stage: int) -> str:
    return " " if fmt != "paper" else ("," if stage == 1 else ", ")


def _ordered_subsets_pattern(items: Sequence[str], sep: str) -> str:
    """Any non-empty subsequence of `items`, in order, joined by `sep` (size quadratic in len(items), no lookaround).
    The separators (' ', ',', ', ') are no regex metacharacters."""
    alternatives = [item + "".join(f"(?:{sep}{later})?" for later in items[i + 1 :]) for i, item in enumerate(items)]
    return "(?:" + "|".join(alternatives) + ")"


@functools.cache
def answer_pattern(fmt: str, stage: int) -> str:
    """A regular expression matched (use `re.fullmatch`) by exactly the well-formed answers of `fmt` and `stage`:
    any non-empty subset of the stage's labels, in answer order. No anchors, lookarounds or back-references, so it
    compiles to a finite automaton for constrained decoding."""
    check_format(fmt)
    items = [_item_pattern(fmt, stage, k) for k in label_keys(stage)]
    body = _ordered_subsets_pattern(items, _separator(fmt, stage))
    if fmt == "paper":
        return f"\\[ {body} \\]" if stage == 1 else f"\\[{body}\\]"
    return body


@functools.cache
def _compiled(fmt: str, stage: int) -> re.Pattern:
    return re.compile(answer_pattern(fmt, stage))


@functools.cache
def _compiled_item(fmt: str, stage: int, key: str) -> re.Pattern:
    return re.compile(_item_pattern(fmt, stage, key))


def _split_items(fmt: str, stage: int, text: str) -> list[str]:
    if fmt == "paper":
        inner = text[2:-2] if stage == 1 else text[1:-1]
        return inner.split(_separator(fmt, stage))
    parts = text.split(" ")
    return parts if stage == 1 else [" ".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]


def _item_value(key: str, item: str) -> float | str:
    if key == "class":
        return item.strip("'")
    raw = item.split(":", 1)[1] if ":" in item else item  # paper stage 2: KEY:' v '
    raw = raw.split(" ", 1)[1] if raw[:1].isalpha() else raw  # compact stage 2: key v
    return float(raw.strip("'").replace(" ", ""))


def parse_answer(
    fmt: str, stage: int, text: str, asked: Sequence[str] | None = None
) -> tuple[dict[str, float | str | None], bool]:
    """Generated text -> ({label: value or None for every label of the stage}, ok).

    ok is True when `text` (surrounding whitespace aside) is a well-formed answer and, if `asked` (the labels the
    question named) is given, answers exactly those. Otherwise every value is None and ok is False; no exception.
    Stage-1 answers carry no label names: items are matched to labels by their shape (a class letter, Teff's
    decimals, [Fe/H]'s sign in compact). An answer with log g or [Fe/H] but not both is ambiguous without `asked`
    in `paper`, and in compact when the value is negative (never the case in LAMOST catalogues, which give all three
    or none): ok=False then.
    """
    keys = label_keys(stage)
    check_format(fmt)
    empty: dict[str, float | str | None] = dict.fromkeys(keys)
    try:
        if not isinstance(text, str):
            return empty, False
        text = text.strip()
        if not _compiled(fmt, stage).fullmatch(text):
            return empty, False
        items = _split_items(fmt, stage, text)
        if stage == 2:
            found = {}
            for item in items:
                key = item.split(":", 1)[0].lower() if fmt == "paper" else item.split(" ", 1)[0] + "_fe"
                found[key] = _item_value(key, item)
            chosen = [k for k in keys if k in found]
        else:
            if asked is not None:
                candidates = [_ordered(stage, asked)]
            else:
                candidates = [list(c) for c in itertools.combinations(keys, len(items))]
            fits = [
                c
                for c in candidates
                if len(c) == len(items)
                and all(_compiled_item(fmt, stage, k).fullmatch(i) for k, i in zip(c, items, strict=True))
            ]
            if len(fits) != 1:
                return empty, False  # no reading (or, without `asked`, more than one)
            chosen = fits[0]
            found = {k: _item_value(k, i) for k, i in zip(chosen, items, strict=True)}
        if asked is not None and chosen != _ordered(stage, asked):
            return empty, False
        return {k: found.get(k) for k in keys}, True
    except Exception:  # noqa: BLE001 - a parser of generated text never raises
        return empty, False


def flux_from_question(fmt: str, text: str) -> np.ndarray | None:
    """The flux written in a paper or compact question (None for patch, whose flux span is empty)."""
    check_format(fmt)
    start, stop = text.rfind(FLUX_OPEN), text.rfind(FLUX_CLOSE)
    body = text[start + len(FLUX_OPEN) : stop] if 0 <= start < stop else ""
    if not body:
        return None
    if fmt == "paper":
        return np.array([float(x) for x in body.split(", ")])
    return np.array([int(x) for x in body.split(" ")], dtype=np.float64) / 10**CONFIG.flux_decimals
