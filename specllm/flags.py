"""Quality flags of `specllm infer`'s rows: the one table of bits, their keywords and meanings.

Every output row carries `flag`, an integer bitmask (0: nothing known against the labels), and `flag_reason`, the
keywords of the set bits joined by `;` in bit order. Labels are still written for a flagged row wherever they can
be computed: a flag says "do not trust this number for science without looking", not "no number". `status` stays
what it was: `ok`, or why the spectrum could not be read or cleaned at all.

| bit | value | keyword | meaning |
|---|---|---|---|
| 0 | 1 | `not_star` | the header's CLASS is not STAR (GALAXY, QSO, Unknown): the model knows only stars |
| 1 | 2 | `low SNR` / `no SNR` | SNR_r or SNR_i below the cut `ingest` applies (`--snr-min-r`, `--snr-min-i`, paper: 2), or not measured: `ingest` rejects this spectrum with the same reason |
| 2 | 4 | `partial` | the spectrum misses part of the 3800-8700 A grid at one end (`partial` column; e.g. MILES stops at 7410 A) |
| 3 | 8 | `class` | a class the model was not trained on: the header's SUBCLASS (K, M, dM, gM, ...), or the class head's answer, is outside the trained classes, or the class head's probability `class_prob` is below the model's `class_prob_min` (0, i.e. off, for the shipped model) |
| 4 | 16 | `domain` | the model's own check, no header needed: the spectrum (or the model's view of it: `features` in domain.json) is far from every training spectrum, or has what no training spectrum has, or a band index (TiO, CaH, Ca 4227, ...: with `flux` features) lies outside every training spectrum's range (thresholds set on held-out training spectra, `domain.json` in the model directory), or a predicted label lies outside the training labels' range |
| 5 | 32 | `uncertain` | a predicted 1-sigma (after calibration) exceeds its label's limit `error_max` (set on held-out training spectra, `domain.json`) |

`usable` (a boolean column beside `flag`) is the one rule for which rows to keep: status `ok` and no bit set but
`partial` (a spectrum that misses one end of the grid, such as MILES's, is labelled from the rest and kept).
`flag_reason` ends with `no header`, which sets no bit, where a labelled spectrum came without a header CLASS or
SUBCLASS (MILES, arrays): only the model's own checks judged it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    bit: int
    keyword: str
    meaning: str

    @property
    def value(self) -> int:
        return 1 << self.bit


NOT_STAR = Flag(0, "not_star", "the header's CLASS is not STAR (GALAXY, QSO, Unknown)")
SNR = Flag(1, "low SNR", "SNR_r or SNR_i below ingest's cut, or not measured ('no SNR'): ingest rejects it")
PARTIAL = Flag(2, "partial", "part of the wavelength grid is missing at one end")
CLASS = Flag(3, "class", "a class the model was not trained on (header SUBCLASS, class head, or low class_prob)")
DOMAIN = Flag(
    4,
    "domain",
    "outside the model's domain by its own check (distance from the training spectra, band indices, or label range)",
)
UNCERTAIN = Flag(5, "uncertain", "a predicted 1-sigma (calibrated) above its label's limit (error_max in domain.json)")
FLAGS: tuple[Flag, ...] = (NOT_STAR, SNR, PARTIAL, CLASS, DOMAIN, UNCERTAIN)
# Written in flag_reason, without a bit (it does not make a row unusable), where no header class (CLASS or SUBCLASS)
# came with the spectrum (MILES, arrays): only the model's own checks (`domain`, `uncertain`) could judge it.
NO_HEADER = "no header"
# Bits that leave a row usable (`usable`): the labels were read from the observed part of the spectrum.
USABLE_DESPITE: tuple[Flag, ...] = (PARTIAL,)
# The SNR bit writes the reason `ingest` gives (preprocess.check_snr): 'low SNR', or 'no SNR' when unmeasured.
SNR_REASONS: tuple[str, ...] = ("low SNR", "no SNR")


def not_star(objclass: str | None) -> bool:
    """True when a header states a class and it is not STAR (GALAXY, QSO, Unknown)."""
    return objclass is not None and str(objclass).strip() != "" and str(objclass).strip().upper() != "STAR"


def untrained_class(
    header_class: str | None,
    predicted_class: str | None,
    class_prob: float | None,
    trained: tuple[str, ...] | None,
    class_prob_min: float,
) -> bool:
    """Header class (reduced SUBCLASS) or predicted class outside `trained`, or a class probability below the cut.
    `trained` None: the trained classes are unknown (a model directory without domain.json): only the probability
    counts."""
    if trained is not None:
        if header_class is not None and header_class not in trained:
            return True
        if predicted_class is not None and predicted_class not in trained:
            return True
    return class_prob is not None and class_prob < class_prob_min


def combine(
    *,
    objclass: str | None = None,
    snr_reason: str | None = None,
    partial: bool = False,
    untrained: bool = False,
    domain: bool = False,
    uncertain: bool = False,
    header: bool = True,
) -> tuple[int, str]:
    """(flag, flag_reason) of one row from its checks; flag_reason lists the keywords in bit order, then
    `no header` (`NO_HEADER`, no bit) where no header class was given, so the header checks could not run."""
    value, words = 0, []
    for flag, on, word in (
        (NOT_STAR, not_star(objclass), NOT_STAR.keyword),
        (SNR, snr_reason is not None, snr_reason),
        (PARTIAL, partial, PARTIAL.keyword),
        (CLASS, untrained, CLASS.keyword),
        (DOMAIN, domain, DOMAIN.keyword),
        (UNCERTAIN, uncertain, UNCERTAIN.keyword),
    ):
        if on:
            value |= flag.value
            words.append(word)
    if not header:
        words.append(NO_HEADER)
    return value, ";".join(words)


def keywords(value: int) -> list[str]:
    """The keywords of the bits set in `value` (the SNR bit as `low SNR`)."""
    return [f.keyword for f in FLAGS if value & f.value]


def usable(status: str | None, value: int | None) -> bool:
    """The `usable` column: the row's labels are fit for science as far as specllm knows (status ok, no bit set
    but those of `USABLE_DESPITE`)."""
    if status != "ok" or value is None:
        return False
    allowed = sum(f.value for f in USABLE_DESPITE)
    return int(value) & ~allowed == 0


def keyword_counts(values, reasons=None) -> dict[str, int]:
    """Rows per keyword (a row counts once under each of its set bits; the SNR bit under the reason written)."""
    counts: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        for f in FLAGS:
            if int(v) & f.value:
                word = f.keyword
                if f is SNR and reasons is not None and reasons[i]:
                    word = next((w for w in SNR_REASONS if w in str(reasons[i]).split(";")), word)
                counts[word] = counts.get(word, 0) + 1
    return counts


def has(value: int | None, flag: Flag) -> bool:
    return value is not None and bool(int(value) & flag.value)


def markdown_table() -> str:
    """The bit table as Markdown (model card, README)."""
    lines = ["| bit | value | keyword | meaning |", "|---|---|---|---|"]  # one numbering: bit (0..5) and value
    for f in FLAGS:
        word = " / ".join(f"`{w}`" for w in SNR_REASONS) if f is SNR else f"`{f.keyword}`"
        lines.append(f"| {f.bit} | {f.value} | {word} | {f.meaning} |")
    return "\n".join(lines)
