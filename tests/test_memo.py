"""pipeline.memo: an identity is computed once per stamp on a machine, found again by a new process."""

import json

from pipeline import memo


def test_a_value_is_computed_once_per_stamp_and_found_by_a_new_process(tmp_path, monkeypatch):
    monkeypatch.setenv("CTM_DIGEST_CACHE", str(tmp_path / "memo"))
    monkeypatch.setattr(memo, "_here", {})
    calls = []

    def compute():
        calls.append(1)
        return {"digest": "abc", "shape": [1, 8, 8]}

    stamp = {"file": "x.npz", "size": 10, "mtime": "1.5"}
    first = memo.remembered(stamp, compute)
    first["shape"].append(9)  # a caller's copy: what is remembered stays as computed
    assert memo.remembered(stamp, compute) == {"digest": "abc", "shape": [1, 8, 8]} and len(calls) == 1
    saved, = (tmp_path / "memo").glob("*.json")
    assert json.loads(saved.read_text()) == {"stamp": stamp, "value": {"digest": "abc", "shape": [1, 8, 8]}}
    monkeypatch.setattr(memo, "_here", {})  # a new process on this machine
    assert memo.remembered(stamp, compute)["digest"] == "abc" and len(calls) == 1
    memo.remembered({**stamp, "mtime": "2.5"}, compute)  # the file changed: computed again
    assert len(calls) == 2


def test_a_memo_folder_that_cannot_be_written_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("CTM_DIGEST_CACHE", str(tmp_path / "file" / "memo"))
    monkeypatch.setattr(memo, "_here", {})
    assert memo.remembered({"a": 1}, lambda: 7) == 7


def test_file_versions_are_what_local_and_object_stores_report():
    assert memo.file_version({"size": 3, "mtime": 1.25}) == ["1.25"]
    assert memo.file_version({"size": 3, "LastModified": "2024-01-01", "ETag": '"e1"'}) == ["2024-01-01", '"e1"']
    assert memo.file_version({"size": 3}) == []
