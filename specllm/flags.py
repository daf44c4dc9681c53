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
| 4 | 16 | `domain` | the model's own check, no header needed: the spectrum's features (the patch embeddings, or the read-out hidden state: `features` in domain.json) lie outside the training set's distribution (threshold set on held-out training spectra, `domain.json` in the model directory), or a predicted label lies outside the training labels' range |
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
DOMAIN = Flag(4, "domain", "outside the model's domain by its own check (feature distance or label range)")
FLAGS: tuple[Flag, ...] = (NOT_STAR, SNR, PARTIAL, CLASS, DOMAIN)
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
) -> tuple[int, str]:
    """(flag, flag_reason) of one row from its checks; flag_reason lists the keywords in bit order."""
    value, words = 0, []
    for flag, on, word in (
        (NOT_STAR, not_star(objclass), NOT_STAR.keyword),
        (SNR, snr_reason is not None, snr_reason),
        (PARTIAL, partial, PARTIAL.keyword),
        (CLASS, untrained, CLASS.keyword),
        (DOMAIN, domain, DOMAIN.keyword),
    ):
        if on:
            value |= flag.value
            words.append(word)
    return value, ";".join(words)


def keywords(value: int) -> list[str]:
    """The keywords of the bits set in `value` (the SNR bit as `low SNR`)."""
    return [f.keyword for f in FLAGS if value & f.value]


def has(value: int | None, flag: Flag) -> bool:
    return value is not None and bool(int(value) & flag.value)


def markdown_table() -> str:
    """The bit table as Markdown (model card, README)."""
    lines = ["| bit | value | keyword | meaning |", "|---|---|---|---|"]
    for f in FLAGS:
        word = " / ".join(f"`{w}`" for w in SNR_REASONS) if f is SNR else f"`{f.keyword}`"
        lines.append(f"| {f.bit} | {f.value} | {word} | {f.meaning} |")
    return "\n".join(lines)
