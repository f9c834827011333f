"""Opening an fsspec URL with an error that says which extra to install when its filesystem package is missing.

fsspec ships the local, memory and HTTP filesystems; s3:// needs s3fs (installed with the project) and gs:// needs
gcsfs (`pip install 'ctm-ray[gcs]'`). Without the package fsspec raises a bare ImportError deep inside a stage.
"""

import fsspec

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


class MissingFilesystem(ImportError, ValueError):
    """A URL whose fsspec filesystem is not installed; a ValueError too, so the stages' one-line errors report it."""


def url_to_fs(url, **storage_options):
    """fsspec.core.url_to_fs(url, **storage_options), naming the extra to install when the protocol's package is
    missing."""
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        protocol = str(url).split("://", 1)[0].lower()
        extra = EXTRAS.get(protocol)
        todo = (f"pip install 'ctm-ray[{extra}]'" if extra else
                f"install the fsspec filesystem package for {protocol}:// (see fsspec's list of implementations)")
        raise MissingFilesystem(f"{url}: {protocol}:// needs a package that is not installed ({e}): {todo}") from e
