"""Real images for the trajectory cache and the DSM / GAN real branches: digits, CIFAR-10, ImageNet-64, image folders.

Every source gives float32 images in [-1, 1] shaped (M, C, H, W), int64 labels (-1 where the source has no classes)
and an identity named by content, not by path. Paths may be local or fsspec URLs (file://, s3://, gs://, https://).
"""

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np
import torch
from PIL import Image

from ctm.digits import load_digits_images

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_BATCH = re.compile(r"(?:^|/)data_batch_([1-5])$")  # training batches; test_batch is never read
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "I", "I;16", "F")
SUBSET_SEED = 0


class DatasetError(ValueError):
    """A dataset file or folder that is not what its config says; the message says what was expected."""


class RefusedPickleError(pickle.UnpicklingError):
    """A CIFAR-10 batch that names anything beyond dicts, lists, bytes, numbers and numpy arrays; nothing was run."""


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def load_dataset(data_cfg):
    """(images float32 (M, C, H, W) in [-1, 1], labels int64 (M,), identity) for the dataset `data_cfg` names.

    identity = {"name", "num_images", "image_shape" [C, H, W], "num_classes" (0: unlabelled), "digest"}; the digest is
    the sha256 of the image and label bytes, so two paths to the same data give one identity.
    """
    loaders = {"digits": _digits, "cifar10": _cifar10, "imagenet64": _imagenet64, "folder": _folder}
    if data_cfg.name not in loaders:
        raise DatasetError(f"data.name: unknown dataset {data_cfg.name!r}; pick one of {sorted(loaders)}")
    images, labels, num_classes = loaders[data_cfg.name](data_cfg)
    if images.dtype == np.uint8:
        images = images.astype(np.float32)
        images /= 127.5  # in place: ImageNet-sized arrays should not be copied twice
        images -= 1.0
    if len(images) == 0:
        raise DatasetError(f"data.path: {data_cfg.path} holds no images")
    if data_cfg.use_labels and num_classes == 0:
        raise DatasetError(f"data.use_labels is true but {data_cfg.path} has no class labels: put the images in one "
                           "subfolder per class (or an .npz with 'labels'), or set data.use_labels=false")
    identity = {"name": data_cfg.name, "num_images": len(images), "image_shape": list(images.shape[1:]),
                "num_classes": num_classes, "digest": content_digest(images, labels)}
    return images, labels, identity


def content_digest(images, labels):
    """sha256 over the shapes, the float32 image bytes and the int64 label bytes."""
    images, labels = np.ascontiguousarray(images, np.float32), np.ascontiguousarray(labels, np.int64)
    h = hashlib.sha256(json.dumps([images.shape, labels.shape]).encode())
    h.update(images.data)
    h.update(labels.data)
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
    files, _, _ = _list_images(fs, root)
    resolution = data_cfg.resolution or (64 if name == "imagenet64" else None)
    with fs.open(files[0], "rb") as f, Image.open(f) as image:
        channels = 1 if name == "folder" and image.mode in GREY_MODES else 3
        h, w = (resolution, resolution) if resolution else (image.height, image.width)
    return {"name": name, "image_shape": [channels, h, w], "num_images": min(len(files), limit)}


# ---------------------------------------------------------------------------------------------------------------------
# Sources: each returns (images uint8 (M, C, H, W) or float32 in [-1, 1], labels int64 (M,), number of classes)

_CIFAR10_HINT = (f"download cifar-10-python.tar.gz from {CIFAR10_URL} (https://www.cs.toronto.edu/~kriz/) on a machine "
                 "with internet, place it (or its extracted cifar-10-batches-py folder) where this machine can read "
                 "it and pass data.path=<that path or URL>")
_IMAGENET64_HINT = ("pass data.path=<an .npz with 'images' (M,64,64,3 or M,3,64,64 uint8) and 'labels'> or "
                    "<a folder of ImageNet images, one subfolder per class>")
_FOLDER_HINT = "pass data.path=<a folder of images, optionally one subfolder per class>"


def _digits(data_cfg):
    images, labels = load_digits_images()
    keep = _subset(len(images), data_cfg.max_images)
    return images[keep], labels[keep], 10


def _cifar10(data_cfg):
    """The python version of CIFAR-10: data_batch_1..5, each {b'data': uint8 (10000, 3072), b'labels': [...]}."""
    fs, root = _filesystem(data_cfg)
    _require(fs, root, data_cfg, _CIFAR10_HINT)
    batches = _cifar10_folder(fs, root) if fs.isdir(root) else _cifar10_archive(fs, root)
    if not batches:
        raise DatasetError(f"data.path: {data_cfg.path} holds no CIFAR-10 training batch (data_batch_1 .. "
                           f"data_batch_5); {_CIFAR10_HINT}")
    images = np.concatenate([batches[i][0] for i in sorted(batches)])
    labels = np.concatenate([batches[i][1] for i in sorted(batches)])
    keep = _subset(len(images), data_cfg.max_images)
    return images[keep], labels[keep], 10


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


def _cifar10_folder(fs, root):
    for folder in (root, f"{root.rstrip('/')}/cifar-10-batches-py"):
        names = fs.ls(folder, detail=False) if fs.isdir(folder) else []
        found = {int(m.group(1)): n for n in names if (m := CIFAR10_BATCH.search(n.rstrip("/")))}
        if found:
            return {i: _cifar10_batch(fs.cat_file(n), n) for i, n in found.items()}
    return {}


class _CifarUnpickler(pickle.Unpickler):
    """Dicts, lists, bytes, str and ints come from pickle opcodes; numpy arrays need exactly these globals."""

    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise RefusedPickleError(f"refused global '{module}.{name}': a CIFAR-10 batch holds only dicts, lists, "
                                     "bytes, numbers and uint8 arrays, so this file is not one and may run code")
        return _CIFAR_GLOBALS[(module, name)]

    def persistent_load(self, pid):
        raise RefusedPickleError(f"refused persistent id {pid!r}: CIFAR-10 batches use none")


def _ndarray_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise RefusedPickleError(f"array subtype {subtype!r} refused: only plain numpy arrays are read")
    return np.ndarray(shape, _plain_dtype(dtype))


def _plain_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:
        raise RefusedPickleError(f"numpy dtype {dtype!r} refused: object arrays can hold code")
    return dtype


def _latin1_bytes(text, encoding):
    """`_codecs.encode`, which pickle protocol 2 written by Python 3 uses for bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise RefusedPickleError(f"_codecs.encode with encoding {encoding!r} refused: only latin1 bytes are read")
    return text.encode("latin1")


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


def _cifar10_batch(raw, where):
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except RefusedPickleError as e:
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
        return _decode_folder(fs, root, data_cfg, data_cfg.resolution or 64, grey=False)
    return _imagenet64_npz(fs, root, data_cfg)


def _imagenet64_npz(fs, root, data_cfg):
    """'images' (M,H,W,3) or (M,3,H,W) uint8 with 0-based 'labels', or the downsampled-ImageNet batch format
    (Chrabaszcz et al. 2017): 'data' (M, 3·H·W) channel-first rows with 1-based 'labels'."""
    with fs.open(root, "rb") as f:
        try:
            npz = np.load(f, allow_pickle=False)
            arrays = {k: npz[k] for k in npz.files if k in ("images", "data", "labels")}
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"data.path: {root} is not a readable .npz ({e}); {_IMAGENET64_HINT}") from e
    if "images" in arrays:
        images, label_base = arrays["images"], 0
    elif "data" in arrays:
        images, label_base = arrays["data"], 1
        side = int(round((images.shape[-1] / 3) ** 0.5)) if images.ndim == 2 else 0
        if side * side * 3 != images.shape[-1]:
            raise DatasetError(f"{root}: 'data' must be (M, 3·H·W) rows, got shape {images.shape}")
        images = images.reshape(-1, 3, side, side)
    else:
        raise DatasetError(f"{root} has no 'images' array (keys: {sorted(arrays)}); {_IMAGENET64_HINT}")
    if images.dtype != np.uint8:
        raise DatasetError(f"{root}: images must be uint8 (0..255), got {images.dtype}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.transpose(0, 3, 1, 2)
    _npz_layout(images.shape, root)
    if data_cfg.resolution not in (None, images.shape[-1]):
        raise DatasetError(f"{root} stores {images.shape[-2]}x{images.shape[-1]} images but data.resolution is "
                           f"{data_cfg.resolution}; set data.resolution=null (or resize from a folder of images)")
    if "labels" not in arrays:
        labels, num_classes = np.full(len(images), -1, np.int64), 0
    else:
        labels = arrays["labels"].astype(np.int64).reshape(-1) - label_base
        if len(labels) != len(images) or (labels.size and labels.min() < 0):
            raise DatasetError(f"{root}: 'labels' must hold one class index >= {label_base} per image, "
                               f"got {len(labels)} labels for {len(images)} images")
        num_classes = int(labels.max()) + 1 if labels.size else 0
    keep = _subset(len(images), data_cfg.max_images)
    return np.ascontiguousarray(images[keep]), labels[keep], num_classes


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
    return _decode_folder(fs, root, data_cfg, data_cfg.resolution, grey=None)


def _decode_folder(fs, root, data_cfg, resolution, grey):
    """Decode a (subset of a) folder into uint8 (M, C, H, W) with a thread pool; ADM's resize when `resolution`.

    grey=None: one channel when the first image (sorted order) is greyscale, else RGB; every image is converted to it.
    """
    files, labels, num_classes = _list_images(fs, root)
    keep = _subset(len(files), data_cfg.max_images)
    files, labels = [files[i] for i in keep], labels[keep]
    with fs.open(files[0], "rb") as f, Image.open(f) as first:
        mode = "L" if (first.mode in GREY_MODES if grey is None else grey) else "RGB"
        h, w = (resolution, resolution) if resolution else (first.height, first.width)
    channels = 1 if mode == "L" else 3
    images = np.empty((len(files), h, w, channels), np.uint8)

    def decode(i):
        with fs.open(files[i], "rb") as f, Image.open(f) as image:
            image = image.convert(mode)
            arr = center_crop_arr(image, resolution) if resolution else np.asarray(image)
        if arr.shape[:2] != (h, w):
            raise DatasetError(f"{files[i]} is {arr.shape[1]}x{arr.shape[0]} but the first image is {w}x{h}; set "
                               "data.resolution to resize and centre-crop every image to one size")
        images[i] = arr.reshape(h, w, channels)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(decode, range(len(files))))
    return images.transpose(0, 3, 1, 2), labels, num_classes


def _list_images(fs, root):
    """(sorted image paths, labels, classes): one class per subfolder (searched recursively), or -1 without any."""
    entries = [e for e in fs.ls(root, detail=True) if not os.path.basename(e["name"].rstrip("/")).startswith(".")]
    dirs = sorted(e["name"] for e in entries if e["type"] == "directory")
    top = sorted(e["name"] for e in entries if e["type"] == "file" and e["name"].lower().endswith(IMAGE_SUFFIXES))
    if dirs and top:
        raise DatasetError(f"{root} mixes images ({os.path.basename(top[0])}, ...) with subfolders "
                           f"({os.path.basename(dirs[0].rstrip('/'))}, ...): put every image in a class subfolder, "
                           "or none")
    if not dirs:
        if not top:
            raise DatasetError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); {_FOLDER_HINT}")
        return top, np.full(len(top), -1, np.int64), 0
    files, labels = [], []
    for label, d in enumerate(dirs):
        found = sorted(p for p in fs.find(d) if p.lower().endswith(IMAGE_SUFFIXES)
                       and not any(part.startswith(".") for part in p[len(d):].split("/")))
        if not found:
            raise DatasetError(f"class folder {d} holds no images; remove it or add its images")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, np.int64), len(dirs)


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


def _subset(num, max_images):
    """Indices of a fixed random subset of max_images (sorted, seed 0), or all of them."""
    if max_images is None or max_images >= num:
        return np.arange(num)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(num)[:max_images])
