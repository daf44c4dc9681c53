"""The splits, decided by a hash of the spectrum id so that reruns and added files never reshuffle them.

- test (paper: 8:2): `split_of`, written into the shards by `ingest`; read once, for the model card;
- validation: a fixed part of the train split (`is_validation`), held out by `train` and used for every choice
  (recipe, epochs, calibration of the uncertainties) and by `fitdomain` for its thresholds.
"""

from __future__ import annotations

import hashlib

from .config import SplitConfig


def hash_fraction(spec_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by the id and the salt."""
    digest = hashlib.sha256(f"{salt}:{spec_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(spec_id: str, split: SplitConfig) -> str:
    """Deterministic 8:2 split from a hash of the id: reruns and added files never reshuffle it."""
    return "test" if hash_fraction(spec_id, split.salt) < split.test_fraction else "train"


def is_validation(spec_id: str, split: SplitConfig) -> bool:
    """Whether a train-split spectrum belongs to the validation split (a salt of its own: drawn with the test
    split's hash, the lowest hashes would all be test spectra)."""
    return hash_fraction(spec_id, split.salt + ":val") < split.val_fraction
