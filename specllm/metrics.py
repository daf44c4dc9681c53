"""Residual statistics, defined once for every report (train's evaluation, `benchmark`, `compare-external`, the
model card).

Residual = prediction - reference, over the rows where both are finite (a missing label or prediction is left out,
never counted as zero). For a set of n residuals r:

- mu: the mean of r.
- sigma: the standard deviation of r with ddof 0, sqrt(mean((r - mu)^2)): the paper's "sigma of the residuals"
  (the spread of these residuals, not an estimate of a parent population's; for n of a few hundred the ddof-1
  value is larger by sqrt(n / (n - 1)), under 0.3 % at n = 200).
- rmse: sqrt(mean(r^2)) (sigma and mu together: rmse^2 = mu^2 + sigma^2).
- median and sigma_mad: the median of r and the robust sigma 1.4826 x median(|r - median(r)|) (equal to sigma
  for Gaussian residuals, insensitive to a few outliers).
- within_1sigma: the fraction of rows whose |r| is at most the row's own quoted error (NaN where no errors are
  given): a calibrated error gives about 0.68.

An empty set gives n = 0 and NaN for every value. Per-class statistics group rows by class, plus one row for all
rows together, named `OVERALL`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .labels import CLASSES

OVERALL = "all"  # the row (or column) of statistics over every class together
MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian / its median absolute deviation
FIELDS: tuple[str, ...] = ("n", "mu", "sigma", "rmse", "median", "sigma_mad", "within_1sigma")
# A row "far off" its catalogue (issue 23): any label's |prediction - catalogue| above its limit here.
FAR_OFF: dict[str, float] = {"teff": 1000.0, "logg": 1.0, "feh": 0.75}


def far_off(predicted: np.ndarray, catalogue: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(N,) True where any label in `names` (columns of both arrays) is further off than `FAR_OFF` says; a label
    without a limit, or missing on either side, counts as not far off."""
    diff = np.abs(np.asarray(predicted, np.float64) - np.asarray(catalogue, np.float64))
    limits = np.array([FAR_OFF.get(n, np.inf) for n in names])
    return (np.nan_to_num(diff, nan=0.0) > limits).any(1)


@dataclass(frozen=True)
class Stat:
    """Statistics of one set of residuals (see the module docstring); NaN where undefined."""

    n: int
    mu: float = math.nan
    sigma: float = math.nan
    rmse: float = math.nan
    median: float = math.nan
    sigma_mad: float = math.nan
    within_1sigma: float = math.nan

    def as_dict(self, fields: Sequence[str] = FIELDS, none_for_nan: bool = True) -> dict:
        """The chosen fields as a dict, NaN as None (for JSON) unless `none_for_nan` is False."""
        d = asdict(self)
        return {k: (None if none_for_nan and isinstance(d[k], float) and math.isnan(d[k]) else d[k]) for k in fields}


def stat_of(r, err=None) -> Stat:
    """Statistics of residuals `r` (non-finite ones left out); `err`: each row's quoted error, aligned with r."""
    r = np.asarray(r, dtype=np.float64)
    ok = np.isfinite(r)
    if err is not None:
        err = np.asarray(err, dtype=np.float64)[ok]
    r = r[ok]
    if not r.size:
        return Stat(0)
    median = float(np.median(r))
    within = math.nan
    if err is not None:
        known = np.isfinite(err)
        within = float(np.mean(np.abs(r[known]) <= err[known])) if known.any() else math.nan
    return Stat(
        n=int(r.size),
        mu=float(r.mean()),
        sigma=float(r.std(ddof=0)),
        rmse=float(np.sqrt(np.mean(r**2))),
        median=median,
        sigma_mad=float(MAD_TO_SIGMA * np.median(np.abs(r - median))),
        within_1sigma=within,
    )


def residual_stats(pred, true, err=None) -> Stat:
    """Statistics of pred - true over the rows where both are finite; `err`: each row's quoted error (for
    within_1sigma)."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(true)
    return stat_of(pred[ok] - true[ok], None if err is None else np.asarray(err, dtype=np.float64)[ok])


def per_class(pred, true, classes, err=None, groups: Sequence[str] = CLASSES) -> dict[str, Stat]:
    """`residual_stats` per class in `groups` (rows whose class equals it) and over every row (`OVERALL`, last).

    Every group is present, an empty one with n = 0; rows of a class outside `groups` count only in OVERALL.
    """
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    classes = np.asarray(classes, dtype=object)
    err = None if err is None else np.asarray(err, dtype=np.float64)
    out = {}
    for group in (*groups, OVERALL):
        rows = np.ones(len(classes), bool) if group == OVERALL else classes == group
        out[group] = residual_stats(pred[rows], true[rows], None if err is None else err[rows])
    return out


def binned(pred, true, width: float, err=None, min_n: int = 1) -> dict[str, Stat]:
    """`residual_stats` per bin of the reference value (`true`), bins `width` wide starting at multiples of `width`
    and named by their lower edge ("9000" holds 9,000 <= true < 10,000); bins with fewer than `min_n` rows are
    left out."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    err = None if err is None else np.asarray(err, dtype=np.float64)
    ok = np.isfinite(pred) & np.isfinite(true)
    edges = np.floor(true[ok] / width) * width
    out = {}
    for edge in np.unique(edges):
        rows = np.flatnonzero(ok)[edges == edge]
        if rows.size >= min_n:
            out[f"{edge:g}"] = residual_stats(pred[rows], true[rows], None if err is None else err[rows])
    return out
