"""Sky matching, one implementation for `crossmatch` and `compare-external`: each position takes the nearest
catalogue row within a radius (astropy `match_to_catalog_sky`; the catalogue's KD-tree is built once, on the
SkyCoord, and reused for every query). A position whose catalogue has a second row within the radius is marked
ambiguous; where two rows are exactly as near (a star listed twice) the earlier catalogue row wins, so the result
never depends on the KD-tree's internals. Positions in degrees (ICRS); NaN or |dec| > 90 never match.
"""

from __future__ import annotations

from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord, search_around_sky

from .config import CrossmatchConfig

TIE_ARCSEC = 1e-6  # two catalogue rows closer in separation than this are a tie


@dataclass
class SkyMatch:
    index: np.ndarray  # int64: catalogue row of the nearest star within the radius, -1 if none
    sep_arcsec: np.ndarray  # float64, NaN where unmatched
    ambiguous: np.ndarray  # bool: a second catalogue row lies within the radius too
    ties: int = 0  # matches where two catalogue rows were equally near (resolved to the earlier row)


class SkyIndex:
    """A catalogue's positions, indexed once (astropy caches the KD-tree on the SkyCoord) and matched many times."""

    def __init__(self, ra, dec, usable: np.ndarray | None = None):
        ra = np.asarray(ra, dtype=np.float64)
        dec = np.asarray(dec, dtype=np.float64)
        ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
        if usable is not None:
            ok &= usable
        self.rows = np.flatnonzero(ok)
        self.coord = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg, frame="icrs") if len(self.rows) else None

    def match(self, ra, dec, radius_arcsec: float) -> SkyMatch:
        ra = np.asarray(ra, dtype=np.float64)
        dec = np.asarray(dec, dtype=np.float64)
        n = len(ra)
        result = SkyMatch(np.full(n, -1, np.int64), np.full(n, np.nan), np.zeros(n, bool))
        query = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
        if self.coord is None or len(query) == 0:
            return result
        coords = SkyCoord(ra[query] * u.deg, dec[query] * u.deg, frame="icrs")
        nearest, sep, _ = coords.match_to_catalog_sky(self.coord)
        sep = sep.to_value(u.arcsec)
        hit = sep <= radius_arcsec
        nearest, sep, query = np.asarray(nearest)[hit], sep[hit], query[hit]
        if len(self.rows) > 1 and len(query):
            sub = coords[hit]
            _, sep2, _ = sub.match_to_catalog_sky(self.coord, nthneighbor=2)
            sep2 = sep2.to_value(u.arcsec)
            result.ambiguous[query] = sep2 <= radius_arcsec
            tie = sep2 - sep <= TIE_ARCSEC
            if tie.any():
                nearest = nearest.copy()
                nearest[tie] = self._earliest_at(sub[tie], sep[tie], nearest[tie])
                result.ties = int(tie.sum())
        result.index[query] = self.rows[nearest]
        result.sep_arcsec[query] = sep
        return result

    def _earliest_at(self, coords: SkyCoord, sep: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """For each position, the earliest catalogue row at its nearest separation (deterministic tie-break)."""
        iq, ic, d2d, _ = search_around_sky(coords, self.coord, (sep.max() + TIE_ARCSEC) * u.arcsec)
        keep = d2d.to_value(u.arcsec) <= sep[iq] + TIE_ARCSEC
        best = np.full(len(coords), np.iinfo(np.int64).max)
        np.minimum.at(best, iq[keep], ic[keep])  # self.rows is increasing: smallest position = earliest row
        return np.where(best == np.iinfo(np.int64).max, fallback, best)


def match_sky(ra, dec, cat_ra, cat_dec, radius_arcsec: float = CrossmatchConfig.radius_arcsec) -> SkyMatch:
    """Positions (deg) -> nearest catalogue row within `radius_arcsec` (the positions-only path)."""
    return SkyIndex(cat_ra, cat_dec).match(ra, dec, radius_arcsec)
