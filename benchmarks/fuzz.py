"""Hostile inputs for every reader (issue 24): `make fuzz` runs the property tests of `tests/test_fuzz.py` on many
generated inputs per reader family (default 10^4 each) and reports counts, time, peak memory, seed and findings.

    .venv/bin/python benchmarks/fuzz.py --examples 10000 --seed 24 [--family fits ...] [--out out/fuzz.json]

The property, per input: it reads, or fails with one line (`SpecllmError`), within a time bound; anything else
(another exception, a message on several lines, a slow input) is a finding, printed with the input that caused it.
Generation only (no shrinking): every finding is then kept as a fixed example in tests/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def property_of(check, counts, findings, finding_type, error_type):
    """The test body run on each generated input: `check(case)`, its outcome counted, a finding kept."""

    def run(case):
        counts["inputs"] += 1
        try:
            outcome = check(case)
        except finding_type as exc:
            counts["findings"] += 1
            if len(findings) < 50:
                findings.append({"finding": str(exc), "case": repr(case)[:2000]})
            return
        if isinstance(outcome, error_type):
            counts["one-line error"] += 1
            if getattr(outcome, "reason", None):  # a spectrum's reject: by reason
                counts[f"  {outcome.reason}"] += 1
        else:
            counts[str(outcome or "read")] += 1

    return run


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.simplefilter("ignore")  # numpy casts of generated values: expected, not findings
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from specllm.errors import SpecllmError
    from tests import test_fuzz

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="generated inputs per family")
    parser.add_argument("--seed", type=int, default=24)
    parser.add_argument("--family", action="append", choices=sorted(test_fuzz.FAMILIES), help="default: all")
    parser.add_argument("--out", help="write the report as JSON here too")
    args = parser.parse_args(argv)

    report = {"seed": args.seed, "examples": args.examples, "families": {}}
    start_all = time.perf_counter()
    for family in args.family or list(test_fuzz.FAMILIES):
        strategy, check = test_fuzz.FAMILIES[family]
        counts: collections.Counter = collections.Counter()
        findings: list[dict] = []

        run = seed(args.seed)(
            settings(
                max_examples=args.examples,
                phases=[Phase.generate],
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )(given(strategy)(property_of(check, counts, findings, test_fuzz.Finding, SpecllmError)))
        )

        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        distinct = collections.Counter(f["finding"].split(" at ")[0][:120] for f in findings)
        report["families"][family] = {
            "inputs": counts["inputs"],
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_mb),
            "outcomes": {k: v for k, v in counts.items() if k != "inputs"},
            "findings": findings,
        }
        print(
            f"{family}: {counts['inputs']} inputs in {seconds:.0f} s, {counts['findings']} findings, "
            f"peak RSS {peak_mb:.0f} MB; outcomes "
            + ", ".join(f"{k.strip()} {v}" for k, v in counts.items() if k not in ("inputs", "findings")),
            flush=True,
        )
        for text, n in distinct.most_common():
            print(f"  finding x{n}: {text}", flush=True)
    report["seconds"] = round(time.perf_counter() - start_all, 1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    total = sum(f["outcomes"].get("findings", 0) for f in report["families"].values())
    print(f"total: {report['seconds']:.0f} s, {total} findings (seed {args.seed})")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
