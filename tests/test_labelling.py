"""The labelling library (specllm.labelling): items are labelled a chunk at a time, in input order."""

from __future__ import annotations

from specllm.config import InferConfig
from specllm.labelling import Item, label_rows, output_columns


def test_label_rows_reads_one_chunk_ahead_and_keeps_order():
    pulled = []

    def items():
        for i in range(10):
            pulled.append(i)
            yield Item(f"f{i}.fits", status="unreadable")  # failed items: rows without a model

    config = InferConfig(batch_size=2, chunk_batches=3)
    assert config.chunk_size == 6
    rows = label_rows(items(), [], "cpu", config)
    first = next(rows)
    assert first[1]["file"] == "f0.fits" and len(pulled) == 6  # one chunk read before its first row comes out
    rest = list(rows)
    assert [row["file"] for _, row in [first, *rest]] == [f"f{i}.fits" for i in range(10)]
    assert all(row["status"] == "unreadable" and not row["usable"] for _, row in [first, *rest])


def test_output_columns_lead_with_ids_and_end_with_header_facts():
    columns = output_columns([])
    assert columns[:5] == ["file", "spec_id", "obsid", "ra", "dec"]
    assert columns[-6:] == ["objclass", "subclass", "z", "snrg", "snrr", "snri"]
