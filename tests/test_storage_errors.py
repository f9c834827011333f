"""Opening fsspec URLs: a missing filesystem package names the extra that installs it."""

import importlib.util

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from pipeline.storage_errors import MissingFilesystem, url_to_fs


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
