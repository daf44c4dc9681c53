"""What a label is, decided once: the stage-1 labels and class order, the [X/Fe] columns, and what counts as missing.

- Classes: the paper trains on A/F/G/K/M (`CLASSES`, in this order); a LAMOST subclass reduces to its letter
  (`reduce_class`: `G3` -> G, `dM2` -> M); anything else is no class (None).
- Stage 1: class, Teff, log g, [Fe/H] (`STAGE1_LABELS`, with the digits the paper writes after the point).
- Stage 2: [X/Fe] for the paper's 21 APOGEE elements (`STAGE2_ELEMENTS`), in columns `<x>_fe` (`element_label`),
  prefixed by the survey in crossmatched shards (`apogee_mg_fe`); `split_element_column` recognises such a column.
- Missing: None/null, NaN, +-inf and the survey placeholders (LAMOST -9999, APOGEE -9999.99: any value
  <= `PLACEHOLDER_MAX`) all mean "no value" (`is_missing`, `as_float`, `clean_number`).
"""

from __future__ import annotations

import math
import re

import numpy as np

# The spectral classes the paper trains on (LAMOST subclasses reduced to their letter).
CLASSES: tuple[str, ...] = ("A", "F", "G", "K", "M")
# Stage-1 numeric labels, in answer order, with the number of decimals the paper writes.
STAGE1_LABELS: tuple[tuple[str, int], ...] = (("teff", 2), ("logg", 3), ("feh", 3))
STAGE1_NAMES: tuple[str, ...] = tuple(name for name, _ in STAGE1_LABELS)
# Title and unit of each stage-1 label in tables and plots.
STAGE1_TITLES: dict[str, tuple[str, str]] = {"teff": ("Teff", "K"), "logg": ("log g", "dex"), "feh": ("[Fe/H]", "dex")}
# The paper's stage-2 elements (APOGEE DR16 [X/Fe]), in answer order.
STAGE2_ELEMENTS: tuple[str, ...] = (
    "C", "CI", "N", "O", "NA", "MG", "AL", "SI", "P", "S", "K", "CA", "TI", "TIII", "V", "CR", "MN", "CO", "NI", "CU", "CE",
)  # fmt: skip

# Survey placeholders for a missing value (LAMOST -9999, APOGEE -9999.99): anything at or below this is missing.
PLACEHOLDER_MAX = -9999.0

# `<x>_fe`, optionally after a survey prefix (`apogee_mg_fe`): x is an element symbol (one or two letters) with an
# optional ionisation stage in Roman numerals, as APOGEE writes them (`ci_fe` = C I, `tiii_fe` = Ti II).
_ELEMENT_COLUMN = re.compile(r"^(?:(?P<prefix>[a-z0-9]+_))?(?P<element>[a-z]{1,2}(?:i{1,3})?)_fe$")
# APOGEE's ionisation-stage names -> (element, stage).
_STAGES = {"TIII": ("TI", " II"), "CI": ("C", " I")}


# ---------------------------------------------------------------- classes


def reduce_class(subclass: str | None) -> str | None:
    """LAMOST subclass -> A/F/G/K/M (`G3` -> G, `dM2`/`gM0`/`sdM1` -> M); None for anything else."""
    if not subclass:
        return None
    s = str(subclass).strip()
    s = re.sub(r"^(sd|d|g)(?=M)", "", s)
    return s[0] if s and s[0] in CLASSES else None


def clean_class(value) -> str | None:
    """A class label as the model learns it (`g` -> G), None where it is not one of CLASSES."""
    if value is None:
        return None
    text = str(value).strip().upper()
    return text if text in CLASSES else None


# ---------------------------------------------------------------- [X/Fe] columns


def element_label(element: str) -> str:
    """`MG` -> `mg_fe`, `TIII` -> `tiii_fe`: the [X/Fe] label name every survey and the predictions use."""
    return f"{element.lower()}_fe"


STAGE2_KEYS: tuple[str, ...] = tuple(element_label(e) for e in STAGE2_ELEMENTS)


def split_element_column(name: str) -> tuple[str, str] | None:
    """`apogee_mg_fe` -> ('apogee_', 'mg'), `ci_fe` -> ('', 'ci'); None for a column that is no [X/Fe] (`fe_h`,
    `teff`, `fe_fe`, `alpha_fe`). Case-insensitive; the parts come back lower-case."""
    m = _ELEMENT_COLUMN.match(name.strip().lower())
    if m is None or m.group("element") == "fe":
        return None
    return m.group("prefix") or "", m.group("element")


def element_columns(names, prefix: str = "") -> list[str]:
    """The [X/Fe] columns among `names` (in their order) that carry exactly `prefix` ('' = unprefixed)."""
    return [n for n in names if (parts := split_element_column(n)) is not None and parts[0] == prefix.lower()]


def element_title(element: str) -> str:
    """'MG' / 'mg' -> '[Mg/Fe]', 'TIII' -> '[Ti II/Fe]', 'CI' -> '[C I/Fe]' (APOGEE's ionisation-stage names)."""
    e = element.upper()
    name, stage = _STAGES.get(e, (e, ""))
    return f"[{name.capitalize()}{stage}/Fe]"


def label_title(name: str) -> str:
    """'teff' -> 'Teff (K)', 'apogee_mg_fe' / 'mg_fe' -> '[Mg/Fe]'; any other name as given."""
    if name in STAGE1_TITLES:
        title, unit = STAGE1_TITLES[name]
        return f"{title} ({unit})"
    parts = split_element_column(name)
    return element_title(parts[1]) if parts else name


# ---------------------------------------------------------------- missing values


def is_missing(values) -> np.ndarray:
    """True where a value is missing: NaN, +-inf or a survey placeholder (<= -9999). Arrays of any shape."""
    v = np.asarray(values, dtype=np.float64)
    return ~np.isfinite(v) | (v <= PLACEHOLDER_MAX)


def as_float(values) -> np.ndarray:
    """`values` as a new float64 array with every missing value (see `is_missing`) as NaN; None reads as NaN."""
    v = np.array(values, dtype=np.float64)
    v[is_missing(v)] = np.nan
    return v


def clean_number(value) -> float | None:
    """One value as a float, or None where it is missing (None, not a number, NaN, inf, placeholder)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= PLACEHOLDER_MAX:
        return None
    return number
