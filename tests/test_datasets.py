import hashlib
import io
import json
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.datasets
from ctm.digits import load_digits_images
from pipeline import memo
from pipeline.config import DataConfig
from pipeline.datasets import (ArraySource, DatasetError, FolderImages, NpzRows, RefusedPickleError, apply_flips,
                               augment, center_crop_arr, check_dataset, content_digest, dataset_identity, flip_mask,
                               load_dataset, open_dataset)

DIGITS_DIGEST = "893ab8e80fa66be9d60576ef7f7d9b4ea763e06b49e2644896aee8aec43d8aca"  # before streaming: keys stay
DIGITS_100_DIGEST = "ab2407f694156f44b82f7ba36caab0e5ab7525fbcb922db8f966926a87a2695a"


@pytest.fixture(autouse=True)
def digest_memo(tmp_path, monkeypatch):
    """Each test remembers digests in its own folder, starting with nothing remembered in this process."""
    monkeypatch.setenv("CTM_DIGEST_CACHE", str(tmp_path / "memo"))
    monkeypatch.setattr(memo, "_here", {})
    return tmp_path / "memo"


def refuse(*args, **kwargs):
    raise AssertionError("read what should not be read")


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-10 written exactly as the real cifar-10-python.tar.gz: Python 2 cPickle (protocol 2) of a dict whose keys and
# strings are Python 2 str (BINSTRING), the array pickled through numpy.core.multiarray._reconstruct.

class Py2Pickler(pickle._Pickler):
    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        if obj is np.ndarray.__reduce__(np.zeros(1))[0]:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_batch(seed, n, label_offset=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(x) for x in (rng.integers(0, 10, n) + label_offset) % 10]
    return {b"batch_label": b"training batch", b"labels": labels, b"data": data,
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def write_tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture
def cifar_archive(tmp_path):
    batches = {i: cifar_batch(i, 20) for i in (1, 2)}
    test_batch = cifar_batch(99, 7)
    members = {"cifar-10-batches-py/batches.meta": py2_pickle({b"label_names": [b"airplane"] * 10}),
               "cifar-10-batches-py/data_batch_2": py2_pickle(batches[2]),  # out of order on purpose
               "cifar-10-batches-py/data_batch_1": py2_pickle(batches[1]),
               "cifar-10-batches-py/test_batch": py2_pickle(test_batch),
               "cifar-10-batches-py/readme.html": b"<html></html>"}
    return write_tar(tmp_path / "cifar-10-python.tar.gz", members), batches


def test_py2_pickler_writes_the_real_opcodes():
    raw = py2_pickle(cifar_batch(0, 2))
    assert raw.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"U\x04data" in raw and b"_codecs" not in raw


def test_cifar10_archive_layout_labels_and_no_test_batch(cifar_archive):
    path, batches = cifar_archive
    images, labels, identity = load_dataset(DataConfig(name="cifar10", path=str(path)))
    data = np.concatenate([batches[1][b"data"], batches[2][b"data"]])
    assert images.shape == (40, 3, 32, 32) and images.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == batches[1][b"labels"] + batches[2][b"labels"]
    # each row: 1024 red, then green, then blue values, row-major 32×32
    c, y, x = 2, 5, 17
    np.testing.assert_array_equal(images[:, c, y, x], data[:, c * 1024 + y * 32 + x].astype(np.float32) / 127.5 - 1)
    assert images.min() >= -1 and images.max() <= 1 and images.min() == -1.0 and images.max() == 1.0
    assert identity == {"name": "cifar10", "num_images": 40, "image_shape": [3, 32, 32], "num_classes": 10,
                        "digest": content_digest(images, labels)}


def test_cifar10_local_path_file_url_and_extracted_folder_share_one_identity(cifar_archive, tmp_path):
    path, _ = cifar_archive
    _, _, by_path = load_dataset(DataConfig(name="cifar10", path=str(path)))
    _, _, by_url = load_dataset(DataConfig(name="cifar10", path=path.resolve().as_uri()))
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    _, _, by_parent = load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "extracted")))
    _, _, by_folder = load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "extracted/cifar-10-batches-py")))
    assert by_url == by_path == by_parent == by_folder


def test_cifar10_subset_is_fixed_and_changes_the_digest(cifar_archive):
    path, _ = cifar_archive
    full, full_labels, whole = load_dataset(DataConfig(name="cifar10", path=str(path)))
    a, a_labels, ident_a = load_dataset(DataConfig(name="cifar10", path=str(path), max_images=8))
    b, _, ident_b = load_dataset(DataConfig(name="cifar10", path=str(path), max_images=8))
    assert ident_a == ident_b and ident_a["num_images"] == 8 and ident_a["digest"] != whole["digest"]
    rows = [int(np.flatnonzero((full == img).all(axis=(1, 2, 3)))[0]) for img in a]
    assert rows == sorted(rows) and len(set(rows)) == 8 and a_labels.tolist() == full_labels[rows].tolist()


class Evil:
    def __reduce__(self):
        import os
        return os.system, ("touch pwned",)


def test_cifar10_refuses_a_malicious_pickle_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    path = write_tar(tmp_path / "evil.tar.gz", {"cifar-10-batches-py/data_batch_1": payload})
    with pytest.raises(RefusedPickleError, match="refused global 'posix.system'"):
        load_dataset(DataConfig(name="cifar10", path=str(path)))
    assert not (tmp_path / "pwned").exists()


def test_cifar10_refuses_object_arrays(tmp_path):
    payload = pickle.dumps({b"data": np.array([print], dtype=object), b"labels": [0]}, protocol=2)
    path = write_tar(tmp_path / "objects.tar.gz", {"data_batch_1": payload})
    with pytest.raises(RefusedPickleError, match="object"):
        load_dataset(DataConfig(name="cifar10", path=str(path)))


def test_cifar10_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz.*https://www\.cs\.toronto\.edu/~kriz/"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "missing.tar.gz")))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar archive at all")
    with pytest.raises(DatasetError, match="not a readable tar archive"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "junk.tar.gz")))
    write_tar(tmp_path / "other.tar.gz", {"cifar-10-batches-py/test_batch": py2_pickle(cifar_batch(0, 3))})
    with pytest.raises(DatasetError, match="no CIFAR-10 training batch"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "other.tar.gz")))
    write_tar(tmp_path / "shape.tar.gz", {"data_batch_1": py2_pickle({b"data": np.zeros((2, 100), np.uint8),
                                                                       b"labels": [0, 1]})})
    with pytest.raises(DatasetError, match=r"uint8 \(n, 3072\)"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path / "shape.tar.gz")))


# ---------------------------------------------------------------------------------------------------------------------
# ImageNet-64 and image folders

def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagenet64_npz_layouts_and_folder_agree(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 2, 2])
    np.savez(tmp_path / "nhwc.npz", images=nhwc, labels=labels)
    np.savez(tmp_path / "nchw.npz", images=nhwc.transpose(0, 3, 1, 2), labels=labels)
    np.savez(tmp_path / "batch.npz", data=nhwc.transpose(0, 3, 1, 2).reshape(6, -1), labels=labels + 1)
    for i, (arr, label) in enumerate(zip(nhwc, labels)):
        save_png(tmp_path / "folder" / f"n0{label}" / f"{i}.png", arr)
    np.savez_compressed(tmp_path / "compressed.npz", images=nhwc, labels=labels)
    for i, (arr, label) in enumerate(zip(nhwc, labels)):
        save_png(tmp_path / "folder" / f"n0{label}" / f"{i}.png", arr)
    paths = ("nhwc.npz", "nchw.npz", "batch.npz", "compressed.npz", "folder")
    results = [load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / p), use_labels=True)) for p in paths]
    images, got_labels, identity = results[0]
    np.testing.assert_array_equal(images, nhwc.transpose(0, 3, 1, 2) / np.float32(127.5) - 1)
    assert got_labels.tolist() == labels.tolist()
    assert all(np.array_equal(r[0], images) and np.array_equal(r[1], labels) for r in results)
    assert all(r[2] == identity for r in results[:4])  # the pixels' digest, as before streaming
    assert identity["digest"] == content_digest(images, labels)
    assert results[4][2] == {**identity, "digest": results[4][2]["digest"]} != identity  # a folder: its files' digest
    assert identity["image_shape"] == [3, 64, 64] and identity["num_classes"] == 3
    kinds = [type(open_dataset(DataConfig(name="imagenet64", path=str(tmp_path / p)))) for p in paths]
    assert kinds == [NpzRows, NpzRows, NpzRows, ArraySource, FolderImages]  # compressed: held whole, as uint8


def test_imagenet64_folder_uses_adm_resize(tmp_path):
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)  # H 200, W 300
    save_png(tmp_path / "in" / "cls" / "a.png", big)
    images, labels, identity = load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "in")))
    expected = center_crop_arr(Image.fromarray(big), 64).transpose(2, 0, 1) / np.float32(127.5) - 1
    np.testing.assert_array_equal(images[0], expected)
    assert identity["image_shape"] == [3, 64, 64] and labels.tolist() == [0]


def test_center_crop_arr_halves_with_box_then_crops_the_centre():
    arr = np.zeros((128, 256), np.uint8)
    arr[:, 128:] = 255  # left half black, right half white
    out = center_crop_arr(Image.fromarray(arr), 64)  # 256×128 → BOX → 128×64 → crop columns 32..95
    assert out.shape == (64, 64)
    assert (out[:, :32] == 0).all() and (out[:, 32:] == 255).all()
    small = np.arange(32 * 48, dtype=np.uint8).reshape(32, 48)
    assert center_crop_arr(Image.fromarray(small), 64).shape == (64, 64)  # upsampled bicubically
    same = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(same), 64), same)


def test_imagenet64_npz_errors(tmp_path):
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(DatasetError, match="uint8"):
        load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "float.npz")))
    np.savez(tmp_path / "noimages.npz", pixels=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match="no 'images' array"):
        load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "noimages.npz")))
    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 64, 64, 3), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match="data.resolution is 32"):
        load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "ok.npz"), resolution=32))
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "absent.npz")))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "bad.npz")))


def test_folder_without_classes_grey_and_resize(tmp_path):
    grey = np.arange(100, dtype=np.uint8).reshape(10, 10)
    save_png(tmp_path / "f" / "b.png", grey)
    save_png(tmp_path / "f" / "a.png", 255 - grey)
    (tmp_path / "f" / "notes.txt").write_text("ignored")
    images, labels, identity = load_dataset(DataConfig(name="folder", path=str(tmp_path / "f")))
    assert images.shape == (2, 1, 10, 10) and labels.tolist() == [-1, -1] and identity["num_classes"] == 0
    np.testing.assert_array_equal(images[0, 0], (255 - grey) / np.float32(127.5) - 1)  # sorted: a.png first
    with pytest.raises(DatasetError, match="use_labels"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "f"), use_labels=True))
    resized, _, _ = load_dataset(DataConfig(name="folder", path=str(tmp_path / "f"), resolution=4))
    assert resized.shape == (2, 1, 4, 4)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "empty")))
    save_png(tmp_path / "sizes" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save_png(tmp_path / "sizes" / "b.png", np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(DatasetError, match="set data.resolution"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "sizes")))
    save_png(tmp_path / "mixed" / "a.png", np.zeros((8, 8, 3), np.uint8))
    save_png(tmp_path / "mixed" / "cls" / "b.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="mixes images"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "mixed")))
    (tmp_path / "classes" / "empty_class").mkdir(parents=True)
    save_png(tmp_path / "classes" / "cat" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="class folder .*empty_class holds no images"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "classes")))
    with pytest.raises(DatasetError, match="is a file"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "mixed" / "a.png")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(DataConfig(name="folder", path=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
@pytest.mark.parametrize("name", ["folder", "imagenet64"])
def test_an_unreadable_image_is_named_with_the_key_that_points_there(tmp_path, damage, name):
    rng = np.random.default_rng(0)
    for i in range(3):
        save_png(tmp_path / "f" / f"{i}.png", rng.integers(0, 256, (64, 64, 3), np.uint8))
    bad = tmp_path / "f" / "1.png"
    whole = bad.read_bytes()
    bad.write_bytes(b"just text, saved as .png" if damage == "not an image" else whole[:len(whole) // 2])
    with pytest.raises(DatasetError) as e:
        load_dataset(DataConfig(name=name, path=str(tmp_path / "f")))
    assert str(e.value).startswith(f"data.path: {bad} is not a readable image (") and "object at 0x" not in str(e.value)
    if damage == "not an image":  # the first image is opened by the dry run's check as well
        (tmp_path / "f" / "0.png").write_bytes(bad.read_bytes())
        with pytest.raises(DatasetError, match=f"data.path: {tmp_path / 'f' / '0.png'} is not a readable image"):
            check_dataset(DataConfig(name=name, path=str(tmp_path / "f")))


def test_a_garbage_imagenet64_npz_is_a_dataset_error(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(DatasetError, match=f"data.path: {tmp_path / 'bad.npz'} is not a readable .npz"):
        load_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "bad.npz")))


def test_a_source_reads_only_the_images_asked_for_in_the_order_asked(tmp_path):
    rng = np.random.default_rng(2)
    nhwc = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=nhwc)
    for i, arr in enumerate(nhwc):
        save_png(tmp_path / "f" / f"{i:02d}.png", arr)
    for cfg in (DataConfig(name="imagenet64", path=str(tmp_path / "x.npz"), max_images=20),
                DataConfig(name="folder", path=str(tmp_path / "f"), max_images=20)):
        images, labels, _ = load_dataset(cfg)
        source = open_dataset(cfg)
        read = []
        original = type(source)._read
        source._read = lambda unique: read.append(unique.tolist()) or original(source, unique)
        order = [7, 2, 7, 19, 0]
        got = source[order]
        assert got.dtype == np.float32 and np.array_equal(got, images[order]) and np.array_equal(source[5], images[5])
        assert read == [[0, 2, 7, 19], [5]] and len(source) == 20 and labels.tolist() == [-1] * 20
        with pytest.raises(IndexError, match="outside 0..19"):
            source[[20]]


def test_npz_digest_reads_a_chunk_at_a_time_and_equals_the_digest_before_streaming(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "x.npz", images=rng.integers(0, 256, (23, 3, 4, 4), dtype=np.uint8), labels=np.arange(23) % 5)
    cfg = DataConfig(name="imagenet64", path=str(tmp_path / "x.npz"))
    monkeypatch.setattr(pipeline.datasets, "DIGEST_CHUNK", 5 * 4 * 3 * 4 * 4)  # five float32 images
    rows = []
    original = NpzRows._read
    monkeypatch.setattr(NpzRows, "_read", lambda self, unique: rows.append(len(unique)) or original(self, unique))
    identity = dataset_identity(cfg)
    assert rows == [5, 5, 5, 5, 3]
    images, labels, again = load_dataset(cfg)
    assert identity == again and identity["digest"] == content_digest(images, labels)


def test_a_folder_is_named_by_its_files_never_decoded_and_remembered_by_their_stamps(tmp_path, monkeypatch,
                                                                                     digest_memo):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for name, arr in (("b/1.png", grey), ("a/2.png", 255 - grey), ("a/1.png", grey // 2)):
        save_png(tmp_path / "f" / name, arr)
    cfg = DataConfig(name="folder", path=str(tmp_path / "f"))
    monkeypatch.setattr(FolderImages, "_read", refuse)
    identity = dataset_identity(cfg)
    files = [tmp_path / "f" / n for n in ("a/1.png", "a/2.png", "b/1.png")]  # sorted; class a = 0, b = 1
    h = hashlib.sha256(json.dumps({"digest": "image files", "num_images": 3, "num_classes": 2,
                                   "image_shape": [1, 8, 8]}).encode())
    for f in files:
        h.update(len(f.read_bytes()).to_bytes(8, "little") + f.read_bytes())
    h.update(np.array([0, 0, 1], np.int64).tobytes())
    assert identity == {"name": "folder", "num_images": 3, "image_shape": [1, 8, 8], "num_classes": 2,
                        "digest": h.hexdigest()}
    assert len(list(digest_memo.glob("*.json"))) == 1
    monkeypatch.setattr(memo, "_here", {})  # a new process on this machine: the stamp finds the digest on disk
    with monkeypatch.context() as m:
        m.setattr(type(open_dataset(cfg).fs), "cat_file", refuse)
        assert dataset_identity(cfg) == identity
    save_png(files[0], grey // 3)  # changed in place: new size or modification time, so a new digest
    assert dataset_identity(cfg)["digest"] != identity["digest"]


def test_fingerprints_compare_listings_cheaply(tmp_path):
    for i in range(3):
        save_png(tmp_path / "f" / f"{i}.png", np.full((4, 4), i, np.uint8))
    cfg = DataConfig(name="folder", path=str(tmp_path / "f"))
    before = open_dataset(cfg).fingerprint()
    assert open_dataset(cfg).fingerprint() == before
    save_png(tmp_path / "f" / "3.png", np.zeros((4, 4), np.uint8))
    assert open_dataset(cfg).fingerprint() != before
    assert open_dataset(DataConfig()).fingerprint() == DIGITS_DIGEST  # data held in memory: its digest


def test_the_digits_digest_is_the_one_before_streaming():
    assert dataset_identity(DataConfig())["digest"] == DIGITS_DIGEST
    assert dataset_identity(DataConfig(max_images=100))["digest"] == DIGITS_100_DIGEST
    assert load_dataset(DataConfig())[2]["digest"] == DIGITS_DIGEST


def test_digits_and_check_dataset(tmp_path, cifar_archive):
    images, labels, identity = load_dataset(DataConfig())
    ref_images, ref_labels = load_digits_images()
    np.testing.assert_array_equal(images, ref_images)
    assert identity == {"name": "digits", "num_images": 1797, "image_shape": [1, 8, 8], "num_classes": 10,
                        "digest": content_digest(ref_images, ref_labels)}
    assert check_dataset(DataConfig()) == {"name": "digits", "image_shape": [1, 8, 8], "num_images": 1797}
    assert check_dataset(DataConfig(name="cifar10", path=str(cifar_archive[0])))["image_shape"] == [3, 32, 32]
    np.savez(tmp_path / "x.npz", images=np.zeros((5, 64, 64, 3), np.uint8))
    assert check_dataset(DataConfig(name="imagenet64", path=str(tmp_path / "x.npz"), max_images=3)) == \
        {"name": "imagenet64", "image_shape": [3, 64, 64], "num_images": 3}
    save_png(tmp_path / "g" / "a.png", np.zeros((6, 7), np.uint8))
    assert check_dataset(DataConfig(name="folder", path=str(tmp_path / "g")))["image_shape"] == [1, 6, 7]
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        check_dataset(DataConfig(name="cifar10", path=str(tmp_path / "missing.tar.gz")))


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation

def test_augment_flips_each_record_with_probability_half():
    x = torch.arange(2000 * 2 * 3, dtype=torch.float32).reshape(2000, 1, 2, 3)
    cfg = DataConfig(name="cifar10", path="unused", hflip=True)
    out = augment(x, torch.Generator().manual_seed(0), cfg)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all()  # every record is either untouched or mirrored
    assert abs(flipped.float().mean().item() - 0.5) < 0.05
    again = augment(x, torch.Generator().manual_seed(0), cfg)
    assert torch.equal(out, again)
    mask = flip_mask(2000, torch.Generator().manual_seed(0), cfg)
    assert torch.equal(mask, flipped) and torch.equal(apply_flips(x, mask), out)
    one = augment(x[3], torch.Generator().manual_seed(5), cfg)
    assert one.shape == x[3].shape and (torch.equal(one, x[3]) or torch.equal(one, x[3].flip(-1)))


def test_augment_never_flips_digits_or_when_disabled():
    x = torch.randn(64, 1, 8, 8)
    for cfg in (DataConfig(name="digits", hflip=True), DataConfig(name="cifar10", path="unused", hflip=False)):
        gen = torch.Generator().manual_seed(0)
        assert torch.equal(augment(x, gen, cfg), x)
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())  # no draw consumed
