"""`specllm crossmatch`: survey labels (APOGEE, GALAH, Gaia-ESO) for spectrum shards, by sky position.

Matching (`specllm.skymatch`): each spectrum takes the nearest catalogue star within the radius (astropy
`match_to_catalog_sky`, the catalogue's KD-tree built once). Several spectra may take the same star: LAMOST observes many stars repeatedly and
the paper keeps every spectrum of a matched star (`--one-per-star` keeps only the nearest one instead). A star whose
catalogue has a second row within the radius is counted as ambiguous; where two rows are exactly as near (a star
listed twice), the earlier catalogue row wins, so the result never depends on the KD-tree's internals.

Two passes over the shards: positions only (cheap columns) to match everything at once, then each shard in full
(flux and mask included) with the label columns appended, written atomically. Output columns per survey `s`:
`s_id` (string), `s_sep_arcsec` (float32) and `s_<label>` (float32) for every label of the survey, e.g.
`apogee_teff`, `apogee_fe_h`, `apogee_c_fe`, ..., `apogee_tiii_fe`; all null where the spectrum has no match or the
label failed a cut. Stage 2 reads `stage2_label_columns()`. The out directory also gets `crossmatch.json` (match
statistics), `label_counts.csv` / `.md` (the paper's Table 1: valid labels per class and element) and
`manifest.json` (shards, counts, content hash) so `shards.verified_shard_paths(out)` works.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._version import __version__
from .config import CrossmatchConfig
from .errors import SpecllmError
from .files import atomic_write_json, atomic_write_text
from .io.surveys import SURVEYS, SurveyCatalog, get_survey, read_survey
from .labels import CLASSES, STAGE2_ELEMENTS, element_label
from .progress import progress_bar, say
from .shards import (
    check_output,
    exclusive_output,
    integrity_fields,
    iter_batches,
    parquet_file,
    publish,
    read_manifest,
    shards_sha256,
    staged_output,
    table_digest,
    verified_shard_paths,
    write_table,
)
from .skymatch import SkyIndex

STATS = "crossmatch.json"
COUNTS_CSV = "label_counts.csv"
COUNTS_MD = "label_counts.md"
OTHER = "other"  # spectra whose class is not one of CLASSES
PERCENTILES = (50, 90, 95, 99)


def label_columns(survey: str = "apogee") -> list[str]:
    """Every label column crossmatch writes for a survey (`apogee_teff`, ..., `apogee_ce_fe`)."""
    s = get_survey(survey)
    return [s.column_name(lab.name) for lab in s.labels]


def stage2_label_columns(survey: str = "apogee") -> list[str]:
    """The [X/Fe] columns stage 2 learns, in `STAGE2_ELEMENTS` order: `apogee_c_fe`, `apogee_ci_fe`, ..."""
    s = get_survey(survey)
    return [s.column_name(element_label(el)) for el in STAGE2_ELEMENTS]


# ---------------------------------------------------------------- the run


@dataclass
class SurveyMatch:
    catalog: SurveyCatalog
    index: np.ndarray  # per spectrum, over all shards
    sep_arcsec: np.ndarray
    ambiguous: np.ndarray
    ties: int = 0
    dropped: int = 0  # matches given up by one_per_star

    @property
    def key(self) -> str:
        return self.catalog.survey.key


@dataclass
class CrossmatchResult:
    out: str
    spectra: int = 0
    written: int = 0
    shards: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # survey -> statistics (as in crossmatch.json)
    counts: dict = field(default_factory=dict)  # survey -> label -> class -> n valid labels (Table 1)
    content_hash: str = ""

    @property
    def matched(self) -> int:
        return max((s["matched"] for s in self.stats.values()), default=0)


def _check_out(source: str, out: str) -> None:
    src = os.path.abspath(source if os.path.isdir(source) else os.path.dirname(source))
    if os.path.abspath(out) == src:
        raise SpecllmError(f"{out}: --out must differ from the input shard directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SpecllmError(f"{out}: exists and is not a directory")
    manifest = read_manifest(out)
    if (manifest is not None and "crossmatch" not in manifest) or os.path.exists(os.path.join(out, "run.json")):
        raise SpecllmError(f"{out}: holds other shards (an ingest?); choose another --out")


def _read_positions(paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """RA and Dec of every spectrum (NaN where null), reading only those two columns; rows per shard."""
    ras, decs, sizes = [np.zeros(0)], [np.zeros(0)], []
    for path in paths:
        n = 0
        for batch in iter_batches([path], columns=["ra", "dec"], batch_size=65536):
            ras.append(_float(batch.column(0)))
            decs.append(_float(batch.column(1)))
            n += batch.num_rows
        sizes.append(n)
    return np.concatenate(ras), np.concatenate(decs), sizes


def _float(column) -> np.ndarray:
    return np.array(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _match_all(cat: SurveyCatalog, ra: np.ndarray, dec: np.ndarray, config: CrossmatchConfig) -> SurveyMatch:
    index = SkyIndex(cat.ra, cat.dec, cat.matchable)
    n = len(ra)
    out = SurveyMatch(cat, np.full(n, -1, np.int64), np.full(n, np.nan, np.float32), np.zeros(n, bool))
    step = max(1, config.match_chunk)
    for lo in range(0, n, step):
        m = index.match(ra[lo : lo + step], dec[lo : lo + step], config.radius_arcsec)
        out.index[lo : lo + step] = m.index
        out.sep_arcsec[lo : lo + step] = m.sep_arcsec
        out.ambiguous[lo : lo + step] = m.ambiguous
        out.ties += m.ties
    if config.one_per_star:
        _keep_nearest_spectrum(out)
    return out


def _keep_nearest_spectrum(m: SurveyMatch) -> None:
    """One spectrum per star: the nearest, the earlier one on a tie; the others lose the match."""
    hit = np.flatnonzero(m.index >= 0)
    order = np.lexsort((hit, m.sep_arcsec[hit], m.index[hit]))  # by star, then separation, then spectrum order
    ranked = hit[order]
    stars = m.index[ranked]
    later = np.ones(len(ranked), bool)
    later[0:1] = False
    later[1:] = stars[1:] == stars[:-1]
    drop = ranked[later]
    m.index[drop] = -1
    m.sep_arcsec[drop] = np.nan
    m.ambiguous[drop] = False
    m.dropped = len(drop)


def _statistics(m: SurveyMatch, ra: np.ndarray, dec: np.ndarray, config: CrossmatchConfig) -> dict:
    cat = m.catalog
    hit = m.index >= 0
    stars, per_star = np.unique(m.index[hit], return_counts=True)
    seps = m.sep_arcsec[hit].astype(np.float64)
    separation = None
    if len(seps):
        separation = {f"p{p}": round(float(np.percentile(seps, p)), 4) for p in PERCENTILES}
        separation["max"] = round(float(seps.max()), 4)
    return {
        "survey": cat.survey.key,
        "catalog": os.path.abspath(cat.path),
        "catalog_rows": cat.n_rows,
        "catalog_matchable": int(cat.matchable.sum()),
        "position_source": cat.position_source,
        "labels": cat.present,
        "columns_used": cat.columns_used,
        "notes": cat.notes,
        "radius_arcsec": config.radius_arcsec,
        "quality_cuts": config.quality_cuts,
        "spectra": len(ra),
        "spectra_with_position": int((np.isfinite(ra) & np.isfinite(dec)).sum()),
        "matched": int(hit.sum()),
        "unmatched": int((~hit).sum()),
        "ambiguous": int(m.ambiguous.sum()),
        "ties": m.ties,
        "one_per_star_dropped": m.dropped,
        "stars_matched": len(stars),
        "stars_with_several_spectra": int((per_star > 1).sum()),
        "matched_stars_failing_star_cuts": int((~cat.star_ok[stars]).sum()) if len(stars) else 0,
        "separation_arcsec": separation,
        "label_quality": cat.counts,
    }


def _stat_lines(st: dict) -> list[str]:
    key = st["survey"]
    line = (
        f'crossmatch {key}: {st["matched"]} of {st["spectra"]} spectra matched within {st["radius_arcsec"]:g}" '
        f"to {st['stars_matched']} stars ({st['stars_with_several_spectra']} with several spectra); "
        f"ambiguous {st['ambiguous']}, ties {st['ties']}"
    )
    if st["one_per_star_dropped"]:
        line += f", {st['one_per_star_dropped']} further spectra of a matched star dropped (--one-per-star)"
    lines = [line]
    if st["separation_arcsec"]:
        sep = st["separation_arcsec"]
        lines.append(f"crossmatch {key}: separation " + ", ".join(f'{k} {v:.3f}"' for k, v in sep.items()))
    if st["spectra"] - st["spectra_with_position"]:
        lines.append(f"crossmatch {key}: {st['spectra'] - st['spectra_with_position']} spectra have no position")
    if st["matched_stars_failing_star_cuts"]:
        lines.append(
            f"crossmatch {key}: {st['matched_stars_failing_star_cuts']} matched stars fail a star-level cut (labels nulled)"
        )
    return lines


def _append_labels(table: pa.Table, m: SurveyMatch, lo: int, hi: int) -> pa.Table:
    cat = m.catalog
    s = cat.survey
    idx = m.index[lo:hi]
    hit = idx >= 0
    safe = np.where(hit, idx, 0)
    ids = cat.ids[safe] if len(cat.ids) else np.full(len(idx), None, dtype=object)
    ids = np.where(hit, ids, None)
    columns = [
        (pa.field(f"{s.key}_id", pa.string()), pa.array(ids, type=pa.string())),
        (pa.field(f"{s.key}_sep_arcsec", pa.float32()), pa.array(m.sep_arcsec[lo:hi], type=pa.float32(), mask=~hit)),
    ]
    for lab in s.labels:
        values = cat.labels[lab.name][safe] if cat.n_rows else np.full(len(idx), np.nan, np.float32)
        columns.append(
            (
                pa.field(s.column_name(lab.name), pa.float32()),
                pa.array(values, type=pa.float32(), mask=~hit | np.isnan(values)),
            )
        )
    for f, arr in columns:
        if f.name in table.column_names:
            table = table.drop_columns([f.name])  # crossmatching crossmatched shards replaces the labels
        table = table.append_column(f, arr)
    return table


def _count(counts: dict, table: pa.Table, matches: list[SurveyMatch]) -> None:
    classes = table.column("class").to_pylist() if "class" in table.column_names else [None] * table.num_rows
    classes = np.asarray([c if c in CLASSES else OTHER for c in classes], dtype=object)
    for m in matches:
        s = m.catalog.survey
        per = counts[s.key]
        for label in per:
            column = f"{s.key}_id" if label == "matched" else s.column_name(label)
            valid = np.asarray(table.column(column).is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            for cls in (*CLASSES, OTHER):
                per[label][cls] += int((valid & (classes == cls)).sum())


def counts_table(counts: dict) -> tuple[str, str]:
    """Table 1 as CSV and Markdown: valid labels per class (A/F/G/K/M, other) and label, per survey."""
    cols = (*CLASSES, OTHER)
    csv = ["survey,label," + ",".join(cols) + ",total"]
    md = []
    for key, per in counts.items():
        md += [f"### {SURVEYS[key].title} (`{key}_*`): valid labels per class", ""]
        md += ["| label | " + " | ".join(cols) + " | total |", "|---|" + "---:|" * (len(cols) + 1)]
        for label, by_class in per.items():
            values = [by_class[c] for c in cols]
            csv.append(f"{key},{label}," + ",".join(str(v) for v in values) + f",{sum(values)}")
            md.append(f"| {label} | " + " | ".join(str(v) for v in values) + f" | {sum(values)} |")
        md.append("")
    return "\n".join(csv) + "\n", "\n".join(md)


@exclusive_output("out")
def run_crossmatch(
    shards: str,
    out: str,
    catalogs: dict[str, str],
    config: CrossmatchConfig = CrossmatchConfig(),
) -> CrossmatchResult:
    """Match the spectra of `shards` to survey catalogues ({'apogee': path, 'galah': path, 'gaiaeso': path})."""
    catalogs = {get_survey(k).key: v for k, v in catalogs.items() if v}
    if not catalogs:
        raise SpecllmError("no catalogue given: use --apogee, --galah and/or --gaia-eso")
    if not config.radius_arcsec > 0:
        raise SpecllmError(f"--radius must be positive (got {config.radius_arcsec:g})")
    paths = verified_shard_paths(shards, config.verify)
    _check_out(shards, out)
    check_output(out, sum(os.path.getsize(p) for p in paths))  # the input's columns, plus a few per survey
    cats = {key: read_survey(path, key, config.quality_cuts) for key, path in catalogs.items()}  # fail fast
    for cat in cats.values():
        for line in cat.summary_lines():
            say(line)

    ra, dec, sizes = _read_positions(paths)
    matches = [_match_all(cat, ra, dec, config) for cat in cats.values()]
    result = CrossmatchResult(out=out, spectra=len(ra))
    for m in matches:
        result.stats[m.key] = _statistics(m, ra, dec, config)
        for line in _stat_lines(result.stats[m.key]):
            say(line)

    # Written beside --out and moved in when complete (the manifest last): a failed run leaves --out as it was.
    with staged_output(out, "crossmatch") as staging:
        hashes: dict[str, str] = {}
        counts = {  # Table 1: the labels each catalogue carries
            m.key: {label: dict.fromkeys((*CLASSES, OTHER), 0) for label in ["matched", *m.catalog.present]}
            for m in matches
        }
        digests = []
        lo = 0
        with progress_bar("crossmatch", total=len(paths)) as advance:
            for k, (path, n) in enumerate(zip(paths, sizes, strict=True)):
                hi = lo + n
                table = pa.Table.from_batches(
                    list(iter_batches([path], batch_size=4096)), schema=parquet_file(path).schema_arrow
                )
                for m in matches:
                    table = _append_labels(table, m, lo, hi)
                if config.matched_only:
                    keep = np.zeros(n, bool)
                    for m in matches:
                        keep |= m.index[lo:hi] >= 0
                    table = table.filter(pa.array(keep))
                lo = hi
                advance()
                if table.num_rows == 0:
                    continue
                name = f"part-{k:05d}.parquet"
                digests.append(table_digest(table))
                hashes[name] = write_table(os.path.join(staging, name), table)
                result.shards.append(name)
                result.written += table.num_rows
                _count(counts, table, matches)
        result.counts = counts
        result.content_hash = hashlib.sha256("".join(digests).encode()).hexdigest()

        csv, md = counts_table(counts)
        atomic_write_text(os.path.join(staging, COUNTS_CSV), csv)
        atomic_write_text(os.path.join(staging, COUNTS_MD), md + "\n")
        atomic_write_json(os.path.join(staging, STATS), {"config": dataclasses.asdict(config), "surveys": result.stats})
        source_manifest = read_manifest(shards) or {}
        schema = pq.read_schema(os.path.join(staging, result.shards[0])) if result.shards else None
        publish(
            staging,
            out,
            {
                **{
                    k: source_manifest[k]
                    for k in ("grid", "clean", "split", "balance", "catalog")
                    if k in source_manifest
                },
                "specllm": __version__,
                "kind": "spectra",
                "source": os.path.abspath(shards),
                "source_shards_sha256": shards_sha256(source_manifest),  # the verified shards read
                "crossmatch": {
                    "config": dataclasses.asdict(config),
                    "catalogs": {k: os.path.abspath(v) for k, v in catalogs.items()},
                    "stage2_label_columns": stage2_label_columns() if "apogee" in catalogs else [],
                    "stats": STATS,
                    "label_counts": [COUNTS_CSV, COUNTS_MD],
                },
                "counts": {
                    "spectra": result.spectra,
                    "written": result.written,
                    "matched": {k: st["matched"] for k, st in result.stats.items()},
                },
                **integrity_fields(staging, result.shards, hashes),
                "content_hash": result.content_hash,
                "schema": {f.name: str(f.type) for f in schema} if schema is not None else {},
            },
        )
    say(md)
    say(
        f"crossmatch: wrote {result.written} spectra in {len(result.shards)} shard(s) to {out}, content hash {result.content_hash[:16]}"
    )
    return result
