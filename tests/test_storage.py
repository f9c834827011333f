"""Folders on disks and fsspec URLs: the one atomic write, and a missing filesystem package naming its extra."""

import importlib.util
import os
import pickle
import stat

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.storage import Folder, MissingFilesystem, atomic_file, url_to_fs
from pipeline.train.rundir import RunDir


def test_local_paths_and_urls_open_as_fsspec_does(tmp_path):
    fs, path = url_to_fs(str(tmp_path))
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path)
    assert url_to_fs(f"file://{tmp_path}")[1] == str(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_gs_without_gcsfs_names_the_gcs_extra():
    with pytest.raises(MissingFilesystem, match=r"gs://bucket/cache: gs:// needs a package that is not installed "
                                                r"\(.*gcsfs.*\): pip install 'ctm-ray\[gcs\]'"):
        url_to_fs("gs://bucket/cache")


@pytest.mark.parametrize("url, todo", [("s3://bucket/x", "pip install 'ctm-ray[s3]'"),
                                       ("GCS://bucket/x", "pip install 'ctm-ray[gcs]'"),
                                       ("abfs://box/x", "install the fsspec filesystem package for abfs://")])
def test_every_missing_package_says_what_to_install(monkeypatch, url, todo):
    def missing(url, **options):
        raise ImportError("Install the package to access it")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(MissingFilesystem) as error:
        url_to_fs(url, anon=True)
    assert todo in str(error.value) and isinstance(error.value, ValueError)


def test_atomic_file_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "deep" / "state.json"
    with atomic_file(target, "w") as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_atomic_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "x.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644


def test_a_folder_reads_what_it_wrote_and_pickles_by_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Folder("relative/run")
    assert folder.path == str(tmp_path / "relative" / "run") and folder.read_text("a.json") is None
    folder.write_json("a.json", {"x": 1})
    folder.move("a.json", "sub_b.json")
    assert folder.read_json("sub_b.json") == {"x": 1} and folder.listdir() == ["sub_b.json"]
    assert pickle.loads(pickle.dumps(folder)).path == folder.path
    run = RunDir("relative", "run")
    again = pickle.loads(pickle.dumps(run))
    assert (again.path, again.root, again.ray_storage()) == (folder.path, str(tmp_path / "relative"),
                                                             (str(tmp_path / "relative"), None))
