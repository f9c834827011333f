"""Real images for the trajectory cache and the DSM / GAN real branches: digits, CIFAR-10, ImageNet-64, image folders.

    source = open_dataset(cfg.data)      # labels in memory; source[indices] reads those images only
    identity = dataset_identity(cfg.data)  # the cache key's name of the data, without decoding it
    images, labels, identity = load_dataset(cfg.data)  # everything at once, float32 (small datasets)

Images stay in the bytes their source stores (uint8; the digits' float32) and become float32 in [-1, 1] per read, so
a process holds the images it asked for, not the dataset. Labels are int64, -1 where the source has no classes.
Identities are named by content, not by path. Paths may be local or fsspec URLs (file://, s3://, gs://, https://).
"""

import abc
import hashlib
import io
import json
import math
import os
import re
import struct
import tarfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import fsspec
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ctm import safe_pickle
from ctm.digits import load_digits_images
from pipeline.memo import file_version, remembered

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_BATCH = re.compile(r"(?:^|/)data_batch_([1-5])$")  # training batches; test_batch is never read
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "I", "I;16", "F")
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)  # what PIL raises
UNREADABLE_NPZ = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error)
SUBSET_SEED = 0
DIGEST_CHUNK = 64 << 20  # bytes of float32 images hashed at a time
READ_THREADS = 8


class DatasetError(ValueError):
    """A dataset file or folder that is not what its config says; the message says what was expected."""


class RefusedPickleError(DatasetError, safe_pickle.RefusedPickleError):
    """A CIFAR-10 batch that names anything beyond dicts, lists, bytes, numbers and numpy arrays; nothing was run."""


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def open_dataset(data_cfg):
    """The ImageSource `data_cfg` names: its labels and a listing are read, its images only when indexed."""
    openers = {"digits": _digits, "cifar10": _cifar10, "imagenet64": _imagenet64, "folder": _folder}
    if data_cfg.name not in openers:
        raise DatasetError(f"data.name: unknown dataset {data_cfg.name!r}; pick one of {sorted(openers)}")
    source = openers[data_cfg.name](data_cfg)
    if len(source) == 0:
        raise DatasetError(f"data.path: {data_cfg.path} holds no images")
    if data_cfg.use_labels and source.num_classes == 0:
        raise DatasetError(f"data.use_labels is true but {data_cfg.path} has no class labels: put the images in one "
                           "subfolder per class (or an .npz with 'labels'), or set data.use_labels=false")
    return source


def dataset_identity(data_cfg, source=None):
    """{"name", "num_images", "image_shape" [C, H, W], "num_classes" (0: unlabelled), "digest"} of the data `data_cfg`
    names, with nothing decoded to float beyond one chunk at a time.

    The digest of digits, CIFAR-10 and .npz images is `content_digest` of their pixels, hashed chunk by chunk; that of
    a folder is the sha256 of its image files' bytes (decoding ImageNet's JPEGs would take hours). It is remembered
    per machine by the files' sizes and modification times (`pipeline.memo`), so only the first call reads the data.
    """
    source = open_dataset(data_cfg) if source is None else source
    if source.versions is None:
        return source.identity()
    stamp = {"data": data_cfg.name, "resolution": data_cfg.resolution, "max_images": data_cfg.max_images,
             "subset_seed": SUBSET_SEED, "files": source.versions}
    return remembered(stamp, source.identity)


def load_dataset(data_cfg):
    """(images float32 (M, C, H, W) in [-1, 1], labels int64 (M,), identity) for the dataset `data_cfg` names: the
    whole dataset in memory, for small ones. Large ones: `open_dataset` and read by index."""
    source = open_dataset(data_cfg)
    return source[np.arange(len(source))], source.labels, dataset_identity(data_cfg, source)


def content_digest(images, labels):
    """sha256 over the shapes, the float32 image bytes and the int64 label bytes."""
    images, labels = np.ascontiguousarray(images, np.float32), np.ascontiguousarray(labels, np.int64)
    h = hashlib.sha256(json.dumps([images.shape, labels.shape]).encode())
    h.update(images.data)
    h.update(labels.data)
    return h.hexdigest()


def to_float(images):
    """uint8 (0..255) images as float32 in [-1, 1] (float32 images are returned as they are)."""
    if images.dtype != np.uint8:
        return images
    out = images.astype(np.float32)
    out /= 127.5
    out -= 1.0
    return out


class ImageSource(abc.ABC):
    """A dataset opened for reading by index. `source[indices]` -> float32 (B, C, H, W) in [-1, 1], in the order asked
    (repeats allowed), read and converted from the source's bytes per call; `len(source)` images; `labels` int64 (M,).

    `listing` (sha256 of the names and sizes of the files read per call; None for data held in memory) and
    `versions` (the same with modification times; None where the store gives none) name the files without reading
    them: `fingerprint()` compares two processes' data cheaply, `dataset_identity` remembers digests by `versions`.
    """

    listing = versions = None

    def __init__(self, name, labels, num_classes, image_shape):
        self.name, self.labels, self.num_classes = name, labels, num_classes
        self.image_shape = tuple(int(x) for x in image_shape)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim == 0:
            return self[indices[None]][0]
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"image indices {indices.min()}..{indices.max()} outside 0..{len(self) - 1}")
        unique, inverse = np.unique(indices, return_inverse=True)
        images = to_float(self._read(unique))
        return images if len(unique) == len(indices) and (unique == indices).all() else images[inverse]

    @abc.abstractmethod
    def _read(self, unique):
        """The images at sorted, distinct `unique` indices as stored: uint8 (or float32) (B, C, H, W)."""

    def digest(self):
        """`content_digest` of every image and label, hashed a chunk of images at a time."""
        M = len(self)
        h = hashlib.sha256(json.dumps([[M, *self.image_shape], [M]]).encode())
        step = max(1, DIGEST_CHUNK // (4 * math.prod(self.image_shape)))
        for lo in range(0, M, step):
            h.update(np.ascontiguousarray(self[np.arange(lo, min(lo + step, M))], np.float32).data)
        h.update(np.ascontiguousarray(self.labels, np.int64).data)
        return h.hexdigest()

    def identity(self):
        return {"name": self.name, "num_images": len(self), "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "digest": self.digest()}

    def fingerprint(self):
        """What two processes compare to know they read the same data: the file listing (names and sizes, the
        labels) where images are read from files, else the digest (data held in memory hashes in a second)."""
        if self.listing is None:
            return self.digest()
        h = hashlib.sha256(json.dumps([self.name, len(self), list(self.image_shape), self.num_classes,
                                       self.listing]).encode())
        h.update(np.ascontiguousarray(self.labels, np.int64).data)
        return h.hexdigest()


class ArraySource(ImageSource):
    """Images held in memory as the source stores them (digits float32; CIFAR-10 and compressed .npz uint8)."""

    def __init__(self, name, images, labels, num_classes, versions=None):
        super().__init__(name, labels, num_classes, images.shape[1:])
        self.images, self.versions = images, versions

    def _read(self, unique):
        return self.images[unique]


class NpzRows(ImageSource):
    """The uint8 image rows of an uncompressed .npz member, read by byte range (local seeks or ranged GETs)."""

    def __init__(self, fs, path, offset, stored_shape, layout, keep, labels, num_classes, versions):
        C, H, W = _chw(stored_shape, layout)
        super().__init__("imagenet64", labels, num_classes, (C, H, W))
        self.fs, self.path, self.offset, self.keep = fs, path, offset, keep
        self.stored_shape, self.layout, self.row_bytes = tuple(stored_shape), layout, math.prod(stored_shape[1:])
        self.listing = hashlib.sha256(json.dumps([fs.size(path), list(stored_shape), layout]).encode()).hexdigest()
        self.versions = versions

    def _read(self, unique):
        rows = self.keep[unique]
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []
        starts = [self.offset + int(r[0]) * self.row_bytes for r in runs]
        ends = [self.offset + (int(r[-1]) + 1) * self.row_bytes for r in runs]
        blobs = self.fs.cat_ranges([self.path] * len(runs), starts, ends, on_error="raise")
        raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(rows), *self.stored_shape[1:])
        return _to_chw(raw, self.layout)


class FolderImages(ImageSource):
    """Image files decoded per read (ADM's resize and centre crop when `resolution` is set). Its digest hashes the
    files' bytes, so naming the data never decodes it."""

    def __init__(self, name, fs, root, names, labels, num_classes, mode, size, resolution, listing, versions):
        super().__init__(name, labels, num_classes, (1 if mode == "L" else 3, *size))
        self.fs, self.root, self.names, self.mode, self.resolution = fs, root, names, mode, resolution
        self.listing, self.versions = listing, versions

    def path(self, i):
        return _join(self.root, self.names[i])

    def _read(self, unique):
        C, H, W = self.image_shape
        images = np.empty((len(unique), H, W, C), np.uint8)

        def decode(b):
            path = self.path(unique[b])
            with _image(self.fs, path) as image:
                image = image.convert(self.mode)
                arr = center_crop_arr(image, self.resolution) if self.resolution else np.asarray(image)
            if arr.shape[:2] != (H, W):
                raise DatasetError(f"{path} is {arr.shape[1]}x{arr.shape[0]} but the first image is {W}x{H}; set "
                                   "data.resolution to resize and centre-crop every image to one size")
            images[b] = arr.reshape(H, W, C)

        with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, os.cpu_count() or 1, len(unique)))) as pool:
            for lo in range(0, len(unique), 1024):  # a bounded number of pending decodes
                list(pool.map(decode, range(lo, min(lo + 1024, len(unique)))))
        return images.transpose(0, 3, 1, 2)

    def digest(self):
        """sha256 over the shape, then each image file's length and bytes in dataset order, then the labels."""
        h = hashlib.sha256(json.dumps({"digest": "image files", "num_images": len(self), "num_classes":
                                       self.num_classes, "image_shape": list(self.image_shape)}).encode())
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            for lo in range(0, len(self), 256):
                for blob in pool.map(self.fs.cat_file, [self.path(i) for i in range(lo, min(lo + 256, len(self)))]):
                    h.update(len(blob).to_bytes(8, "little"))
                    h.update(blob)
        h.update(np.ascontiguousarray(self.labels, np.int64).data)
        return h.hexdigest()


def hflip_enabled(data_cfg):
    """Flips are the official augmentation of CIFAR-10 (EDM xflip) and ImageNet-64 (ADM random_flip); a mirrored
    digit is no digit, so digits are never flipped."""
    return data_cfg.hflip and data_cfg.name != "digits"


def flip_mask(num, generator, data_cfg):
    """(num,) bool: which records to flip, each with probability 0.5 drawn from `generator` (all False: no draw)."""
    if not hflip_enabled(data_cfg):
        return torch.zeros(num, dtype=torch.bool)
    return torch.rand(num, generator=generator, device=generator.device).cpu() < 0.5


def apply_flips(x, mask):
    """Mirror x (B, C, H, W) left-right where mask (B,) is True; flip every tensor of a record with the same mask."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def augment(x0, generator, data_cfg):
    """The official augmentation of one record (C, H, W) or a batch (B, C, H, W): horizontal flip with prob. 0.5."""
    batch = x0 if x0.ndim == 4 else x0[None]
    out = apply_flips(batch, flip_mask(len(batch), generator, data_cfg))
    return out if x0.ndim == 4 else out[0]


def center_crop_arr(image, size):
    """ADM's ImageNet preprocessing (Dhariwal & Nichol 2021, image_datasets.py): halve with a BOX filter while the
    short side is >= 2·size, resize bicubically so the short side is `size`, then take the centre size×size crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def check_dataset(data_cfg):
    """What a dry run needs without decoding every image: {"name", "image_shape", "num_images" (None: unknown)}.

    Raises the errors `load_dataset` would for a missing path, a file where a folder belongs, an empty folder or an
    .npz without images; CIFAR-10 archives are only checked to exist.
    """
    name, limit = data_cfg.name, data_cfg.max_images or float("inf")
    if name == "digits":
        return {"name": name, "image_shape": [1, 8, 8], "num_images": min(1797, limit)}
    if name not in ("cifar10", "imagenet64", "folder"):
        raise DatasetError(f"data.name: unknown dataset {name!r}; pick one of cifar10, digits, folder, imagenet64")
    fs, root = _filesystem(data_cfg)
    _require(fs, root, data_cfg, {"cifar10": _CIFAR10_HINT, "imagenet64": _IMAGENET64_HINT}.get(name, _FOLDER_HINT))
    if name == "cifar10":
        return {"name": name, "image_shape": [3, 32, 32], "num_images": None}
    if name == "imagenet64" and not fs.isdir(root):
        shape = _npz_layout(_npz_shapes(fs, root), root)
        return {"name": name, "image_shape": list(shape[1:]), "num_images": min(shape[0], limit)}
    if not fs.isdir(root):
        raise DatasetError(f"data.path: {data_cfg.path} is a file, but the folder dataset reads a folder of images")
    names = _list_images(fs, root)[0]
    resolution = data_cfg.resolution or (64 if name == "imagenet64" else None)
    with _image(fs, _join(root, names[0])) as image:
        channels = 1 if name == "folder" and image.mode in GREY_MODES else 3
        h, w = (resolution, resolution) if resolution else (image.height, image.width)
    return {"name": name, "image_shape": [channels, h, w], "num_images": min(len(names), limit)}


# ---------------------------------------------------------------------------------------------------------------------
# Sources: each returns an ImageSource

_CIFAR10_HINT = (f"download cifar-10-python.tar.gz from {CIFAR10_URL} (https://www.cs.toronto.edu/~kriz/) on a machine "
                 "with internet, place it (or its extracted cifar-10-batches-py folder) where this machine can read "
                 "it and pass data.path=<that path or URL>")
_IMAGENET64_HINT = ("pass data.path=<an .npz with 'images' (M,64,64,3 or M,3,64,64 uint8) and 'labels'> or "
                    "<a folder of ImageNet images, one subfolder per class>")
_FOLDER_HINT = "pass data.path=<a folder of images, optionally one subfolder per class>"


def _digits(data_cfg):
    images, labels = load_digits_images()
    keep = _subset(len(images), data_cfg.max_images)
    return ArraySource("digits", images[keep], labels[keep], 10)


def _cifar10(data_cfg):
    """The python version of CIFAR-10: data_batch_1..5, each {b'data': uint8 (10000, 3072), b'labels': [...]}; held
    in memory as uint8 (150 MB), remembered by the archive's (or the batch files') sizes and modification times."""
    fs, root = _filesystem(data_cfg)
    _require(fs, root, data_cfg, _CIFAR10_HINT)
    if fs.isdir(root):
        names = _cifar10_names(fs, root)
        batches = {i: _cifar10_batch(fs.cat_file(n), n) for i, n in names.items()}
        infos = [fs.info(names[i]) for i in sorted(names)]
    else:
        batches, infos = _cifar10_archive(fs, root), [fs.info(root)]
    if not batches:
        raise DatasetError(f"data.path: {data_cfg.path} holds no CIFAR-10 training batch (data_batch_1 .. "
                           f"data_batch_5); {_CIFAR10_HINT}")
    images = np.concatenate([batches[i][0] for i in sorted(batches)])
    labels = np.concatenate([batches[i][1] for i in sorted(batches)])
    keep = _subset(len(images), data_cfg.max_images)
    versions = [[os.path.basename(i["name"]), i["size"], *file_version(i)] for i in infos]
    return ArraySource("cifar10", images[keep], labels[keep], 10,
                       versions=_sha(versions) if all(len(v) > 2 for v in versions) else None)


def _cifar10_archive(fs, root):
    """Read the batches from the .tar.gz as a stream: nothing is extracted to disk and no seeking is needed."""
    batches = {}
    try:
        with fs.open(root, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                match = CIFAR10_BATCH.search(member.name)
                if match and member.isfile():
                    batches[int(match.group(1))] = _cifar10_batch(tar.extractfile(member).read(), member.name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"data.path: {root} is not a readable tar archive ({type(e).__name__}: {e}); expected "
                           f"cifar-10-python.tar.gz as downloaded from {CIFAR10_URL}") from e
    return batches


def _cifar10_names(fs, root):
    """{batch number: path} of the data_batch_* files in `root` or its cifar-10-batches-py subfolder."""
    for folder in (root, f"{root.rstrip('/')}/cifar-10-batches-py"):
        names = fs.ls(folder, detail=False) if fs.isdir(folder) else []
        found = {int(m.group(1)): n for n in names if (m := CIFAR10_BATCH.search(n.rstrip("/")))}
        if found:
            return found
    return {}


CIFAR_GLOBALS = {**safe_pickle.NUMPY_ARRAYS, ("_codecs", "encode"): safe_pickle.latin1_bytes}


def _cifar10_batch(raw, where):
    try:
        # dicts, lists, bytes, str and ints come from pickle opcodes; numpy arrays and Python 3's bytes need globals
        batch = safe_pickle.restricted_load(io.BytesIO(raw), CIFAR_GLOBALS, "a CIFAR-10 batch",
                                            "dicts, lists, bytes, numbers and uint8 arrays", encoding="bytes")
    except safe_pickle.RefusedPickleError as e:
        raise RefusedPickleError(f"{where}: {e}") from e
    except Exception as e:
        raise DatasetError(f"{where} is not a CIFAR-10 batch pickle ({type(e).__name__}: {e})") from e
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()} \
        if isinstance(batch, dict) else {}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or not isinstance(labels, list) or len(labels) != len(data):
        raise DatasetError(f"{where} is not a CIFAR-10 batch: expected {{b'data': uint8 (n, 3072), b'labels': n ints}}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: CIFAR-10 labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels  # rows are 1024 red, 1024 green, 1024 blue values, row-major 32x32


def _imagenet64(data_cfg):
    fs, root = _filesystem(data_cfg)
    _require(fs, root, data_cfg, _IMAGENET64_HINT)
    if fs.isdir(root):
        return _open_folder("imagenet64", fs, root, data_cfg, data_cfg.resolution or 64, grey=False)
    return _imagenet64_npz(fs, root, data_cfg)


def _imagenet64_npz(fs, root, data_cfg):
    """'images' (M,H,W,3) or (M,3,H,W) uint8 with 0-based 'labels', or the downsampled-ImageNet batch format
    (Chrabaszcz et al. 2017): 'data' (M, 3·H·W) channel-first rows with 1-based 'labels'.

    An uncompressed member (np.savez) is read by row; a compressed one (np.savez_compressed) cannot be, and is held
    in memory as uint8."""
    try:
        with fs.open(root, "rb") as f, zipfile.ZipFile(f) as z:
            names = [n.removesuffix(".npy") for n in z.namelist()]
            key = next((k for k in ("images", "data") if k in names), None)
            if key is None:
                raise DatasetError(f"{root} has no 'images' array (keys: {sorted(names)}); {_IMAGENET64_HINT}")
            labels = np.lib.format.read_array(z.open("labels.npy")) if "labels" in names else None
            info = z.getinfo(f"{key}.npy")
            member = _stored_member(f, info)
            if member is None or member[2]:  # compressed, or Fortran order: read whole
                images = np.lib.format.read_array(z.open(f"{key}.npy"), allow_pickle=False)
                offset, stored_shape, dtype = None, images.shape, images.dtype
            else:
                offset, stored_shape, _, dtype = member
    except DatasetError:
        raise
    except UNREADABLE_NPZ as e:
        raise DatasetError(f"data.path: {root} is not a readable .npz ({e}); {_IMAGENET64_HINT}") from e
    layout = _npz_member_layout(key, stored_shape, root)
    if dtype != np.uint8:
        raise DatasetError(f"{root}: images must be uint8 (0..255), got {dtype}")
    M, (C, H, W) = stored_shape[0], _chw(stored_shape, layout)
    _npz_layout((M, C, H, W), root)
    if data_cfg.resolution not in (None, W):
        raise DatasetError(f"{root} stores {H}x{W} images but data.resolution is {data_cfg.resolution}; set "
                           "data.resolution=null (or resize from a folder of images)")
    label_base = 1 if key == "data" else 0
    if labels is None:
        labels, num_classes = np.full(M, -1, np.int64), 0
    else:
        labels = labels.astype(np.int64).reshape(-1) - label_base
        if len(labels) != M or (labels.size and labels.min() < 0):
            raise DatasetError(f"{root}: 'labels' must hold one class index >= {label_base} per image, "
                               f"got {len(labels)} labels for {M} images")
        num_classes = int(labels.max()) + 1 if labels.size else 0
    keep = _subset(M, data_cfg.max_images)
    info = fs.info(root)
    versions = _sha([info["size"], *file_version(info)]) if file_version(info) else None
    if offset is None:
        return ArraySource("imagenet64", _to_chw(images[keep], layout), labels[keep], num_classes, versions)
    return NpzRows(fs, root, offset, stored_shape, layout, keep, labels[keep], num_classes, versions)


def _stored_member(f, info):
    """(offset of the first array byte, shape, fortran order, dtype) of an uncompressed .npy member of the open zip
    file `f`; None when the member is compressed."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ValueError(f"no local file header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    return f.tell(), shape, fortran, dtype


def _npz_member_layout(key, shape, root):
    """How a row is stored: "nhwc", "nchw" ('images') or "rows" ('data', M × 3·H·W channel-first)."""
    if key == "data":
        side = int(round((shape[-1] / 3) ** 0.5)) if len(shape) == 2 else 0
        if side * side * 3 != shape[-1]:
            raise DatasetError(f"{root}: 'data' must be (M, 3·H·W) rows, got shape {tuple(shape)}")
        return "rows"
    if len(shape) != 4:
        _npz_layout(shape, root)
    return "nhwc" if shape[-1] == 3 and shape[1] != 3 else "nchw"


def _chw(stored_shape, layout):
    if layout == "rows":
        side = int(round((stored_shape[-1] / 3) ** 0.5))
        return 3, side, side
    if layout == "nhwc":
        return stored_shape[3], stored_shape[1], stored_shape[2]
    return tuple(stored_shape[1:])


def _to_chw(rows, layout):
    """Stored rows (B, ...) as contiguous (B, C, H, W)."""
    if layout == "rows":
        C, H, W = _chw(rows.shape, layout)
        return rows.reshape(len(rows), C, H, W)
    return np.ascontiguousarray(rows.transpose(0, 3, 1, 2) if layout == "nhwc" else rows)


def _npz_layout(shape, root):
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise DatasetError(f"{root}: images must be (M, H, W, 3) or (M, 3, H, W) with H == W, got shape {tuple(shape)}")
    return shape


def _npz_shapes(fs, root):
    """The images array's shape (M, C, H, W) from the .npz member header, reading no pixels."""
    try:
        with fs.open(root, "rb") as f, zipfile.ZipFile(f) as z:
            return _npz_images_shape(z, root)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DatasetError(f"data.path: {root} is not a readable .npz ({e}); {_IMAGENET64_HINT}") from e


def _npz_images_shape(z, root):
    for key in ("images", "data"):
        if f"{key}.npy" not in z.namelist():
            continue
        with z.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape = read_header(member)[0]
        if key == "data":
            side = int(round((shape[-1] / 3) ** 0.5))
            return (shape[0], 3, side, side)
        return (shape[0], shape[3], shape[1], shape[2]) if shape[-1] == 3 and shape[1] != 3 else shape
    raise DatasetError(f"{root} has no 'images' array; {_IMAGENET64_HINT}")


def _folder(data_cfg):
    fs, root = _filesystem(data_cfg)
    _require(fs, root, data_cfg, _FOLDER_HINT)
    if not fs.isdir(root):
        raise DatasetError(f"data.path: {data_cfg.path} is a file, but the folder dataset reads a folder of images")
    return _open_folder("folder", fs, root, data_cfg, data_cfg.resolution, grey=None)


def _open_folder(name, fs, root, data_cfg, resolution, grey):
    """A (subset of a) folder as FolderImages, ADM's resize when `resolution`; only the first image is opened.

    grey=None: one channel when the first image (sorted order) is greyscale, else RGB; every image is converted to it.
    """
    names, labels, num_classes, listing, versions = _list_images(fs, root)
    keep = _subset(len(names), data_cfg.max_images)
    names, labels = names[keep], labels[keep]
    if not len(names):
        raise DatasetError(f"data.path: {data_cfg.path} holds no images (data.max_images={data_cfg.max_images})")
    with _image(fs, _join(root, names[0])) as first:
        mode = "L" if (first.mode in GREY_MODES if grey is None else grey) else "RGB"
        size = (resolution, resolution) if resolution else (first.height, first.width)
    return FolderImages(name, fs, root, names, labels, num_classes, mode, size, resolution, listing, versions)


@contextmanager
def _image(fs, path):
    """An image file of a folder dataset, open; one that PIL cannot decode (here or while the caller converts it) is a
    DatasetError naming the file."""
    try:
        with fs.open(path, "rb") as f, Image.open(f) as image:
            yield image
    except DatasetError:
        raise
    except UNREADABLE_IMAGE as e:
        why = "PIL does not recognise it as an image" if isinstance(e, UnidentifiedImageError) \
            else f"{type(e).__name__}: {e}"
        raise DatasetError(f"data.path: {path} is not a readable image ({why}); remove or replace it") from None


def _list_images(fs, root):
    """(sorted image names below root as a bytes array, labels, classes, listing, versions): one class per subfolder
    (searched recursively), or -1 without any; listing is the sha256 of every image's name and size, versions that of
    its name, size and modification time (None where the store gives no time). The names take a few dozen bytes per
    image (ImageNet: under 50 MB), not a Python string each."""
    entries = [e for e in fs.ls(root, detail=True) if not os.path.basename(e["name"].rstrip("/")).startswith(".")]
    dirs = sorted(e["name"] for e in entries if e["type"] == "directory")
    top = sorted((e for e in entries if e["type"] == "file" and e["name"].lower().endswith(IMAGE_SUFFIXES)),
                 key=lambda e: e["name"])
    if dirs and top:
        raise DatasetError(f"{root} mixes images ({os.path.basename(top[0]['name'])}, ...) with subfolders "
                           f"({os.path.basename(dirs[0].rstrip('/'))}, ...): put every image in a class subfolder, "
                           "or none")
    if not dirs and not top:
        raise DatasetError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); {_FOLDER_HINT}")
    listing, versions, dated = hashlib.sha256(), hashlib.sha256(), True
    names, labels = [], []
    for label, group in enumerate([top] if not dirs else dirs):
        if dirs:
            found = fs.find(group, detail=True)
            group = sorted((i for p, i in found.items() if p.lower().endswith(IMAGE_SUFFIXES)
                            and not any(part.startswith(".") for part in p[len(dirs[label]):].split("/"))),
                           key=lambda i: i["name"])
            if not group:
                raise DatasetError(f"class folder {dirs[label]} holds no images; remove it or add its images")
        found = []
        for info in group:
            name = info["name"][len(root.rstrip("/")) + 1:]
            entry = json.dumps([name, info["size"]]).encode()
            listing.update(entry)
            versions.update(entry + json.dumps(file_version(info)).encode())
            dated = dated and bool(file_version(info))
            found.append(name.encode())
        names.append(np.array(found, dtype=bytes))
        labels.append(np.full(len(found), label if dirs else -1, np.int64))
    return (np.concatenate(names), np.concatenate(labels), len(dirs), listing.hexdigest(),
            versions.hexdigest() if dated else None)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _filesystem(data_cfg):
    if not data_cfg.path:
        raise DatasetError(f"data.path: dataset {data_cfg.name!r} needs a path")
    return fsspec.core.url_to_fs(data_cfg.path, **data_cfg.storage_options)


def _require(fs, root, data_cfg, hint):
    try:
        exists = fs.exists(root)
    except Exception as e:
        raise FileNotFoundError(f"data.path: cannot reach {data_cfg.path} ({type(e).__name__}: {e}); {hint}") from e
    if not exists:
        raise FileNotFoundError(f"data.path: {data_cfg.path} does not exist; {hint}")


def _join(root, name):
    return f"{root.rstrip('/')}/{name.decode()}"


def _sha(value):
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _subset(num, max_images):
    """Indices of a fixed random subset of max_images (sorted, seed 0), or all of them."""
    if max_images is None or max_images >= num:
        return np.arange(num)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(num)[:max_images])
