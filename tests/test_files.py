"""File helpers (specllm.files): atomic writes, a file's SHA-256, replacing a directory whole."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from specllm.files import atomic_write, atomic_write_json, atomic_write_text, file_sha256, replace_dir


def test_atomic_write_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"

    def broken(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "one"  # the old content stays whole
    assert sorted(os.listdir(target.parent)) == ["a.txt"]  # and no temporary is left behind


def test_atomic_write_json_is_stable(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "m.json").read_text()
    assert text.index('"a"') < text.index('"b"') and json.loads(text) == {"a": [1, 2], "b": 1}


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    data = os.urandom(3 << 20) + b"tail"  # more than one 1 MiB block, and a partial last one
    (tmp_path / "x.bin").write_bytes(data)
    assert file_sha256(tmp_path / "x.bin") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()


def test_replace_dir_new_and_existing_target(tmp_path):
    target = tmp_path / "model"
    first = tmp_path / ".model.1"
    first.mkdir()
    (first / "a.txt").write_text("one")
    replace_dir(first, target)
    assert not first.exists() and (target / "a.txt").read_text() == "one"

    second = tmp_path / ".model.2"
    second.mkdir()
    (second / "b.txt").write_text("two")
    (tmp_path / ".model.old").mkdir()  # left by a run killed mid-replace: removed, not in the way
    replace_dir(second, target)
    assert sorted(os.listdir(target)) == ["b.txt"]  # the old directory's files are gone, not merged
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging or .old folder left beside it


def test_one_csv_writer_quotes_and_formats(tmp_path):
    from specllm.files import csv_text, write_csv

    assert csv_text(["a", "b"], [[1.0 / 3, None], ["x,y", 2]]) == 'a,b\n0.3333333333333333,\n"x,y",2\n'
    assert csv_text(["a"], [[1.0 / 3], [7]], "{:.6g}") == "a\n0.333333\n7\n"
    write_csv(tmp_path / "t.csv", ["a"], [[1]])
    assert (tmp_path / "t.csv").read_text() == "a\n1\n"
