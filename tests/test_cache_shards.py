"""One shard on disk: its Zarr layout, commit, checksums, partial reads, and refusal of damage."""

import json

import numpy as np
import pytest
import zarr
from zarr.storage import WrapperStore

from ctm.schedule import karras_grid
from conftest import make_gmm
from pipeline.cache.cache import leftovers, remove_leftovers
from pipeline.cache.errors import DamagedShardError
from pipeline.cache.records import RecordSpec, make_records
from pipeline.cache.shards import (CHECKSUMS, open_checked, open_group, read_columns, read_states, read_trajectories,
                                   shard_problems, write_shard)
from pipeline.cache.store import CacheStore

N, SHAPE = 8, (1, 4, 4)


@pytest.fixture(scope="module")
def records():
    teacher = make_gmm(16, seed=4)
    images = np.random.default_rng(0).uniform(-1, 1, (30, *SHAPE)).astype(np.float32)
    spec = RecordSpec(seed=0, grid=tuple(karras_grid(N).tolist()), K=N - 1, mode="data", image_shape=SHAPE,
                      hflip=True, conditional=False, label_dim=0, dtype="float16", compute_dtype="float64")
    return make_records(spec, teacher, images, np.arange(30) % 10, range(10, 22), batch_size=5)


@pytest.fixture
def shard(tmp_path, records):
    store = CacheStore(tmp_path / "cache")
    return store, write_shard(store, 1, 10, 22, records, key="k")


class CountingStore(WrapperStore):
    """Counts the bytes zarr reads."""

    def __init__(self, store):
        super().__init__(store)
        self.nbytes = 0

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        self.nbytes += 0 if buf is None else len(buf)
        return buf


def test_shard_is_committed_whole_with_checksums(shard, records):
    store, entry = shard
    assert entry["path"].startswith("shards/000001-") and (entry["start"], entry["stop"], entry["count"]) == (10, 22, 12)
    assert store.listdir("shards") == [entry["path"].split("/")[1]]  # the temporary name is gone
    sums = json.loads(store.read_bytes(f"{entry['path']}/{CHECKSUMS}"))
    assert {"zarr.json", "states/zarr.json", "states/c/0/0/0/0/0", "x0/c/0/0/0/0", "index/c/0"} <= set(sums)
    assert shard_problems(store, entry, full=True) == []
    group = zarr.open_group(store.full(entry["path"]), mode="r")  # any Zarr v3 reader
    assert group.attrs["start"] == 10 and group["states"].dtype == np.float16
    assert group["states"].chunks == (1, 1, *SHAPE) and group["states"].shards == (12, N, *SHAPE)
    for name, a in records.items():
        np.testing.assert_array_equal(group[name][:], a)


def test_states_before_n_are_not_stored(shard, records):
    store, entry = shard
    stored = int((N - records["start"]).sum())
    chunk, index = 2 * np.prod(SHAPE) + 4, 12 * N * 16 + 4  # float16 chunk + crc32c; the shard index + crc32c
    assert store.objects(entry["path"])["states/c/0/0/0/0/0"] == stored * chunk + index


def test_two_states_read_two_chunks_and_the_index(shard, records):
    store, entry = shard
    counting = CountingStore(store.zarr_store(entry["path"]))
    group = open_group(store, entry, counting)
    start = read_columns(group, entry, 0, 12)["start"]
    counting.nbytes = 0
    rows = np.array([0, 5, 0, 5])
    cols = np.array([start[0], start[5], N - 1, N - 1])
    out = read_states(group, entry, rows, cols)
    np.testing.assert_array_equal(out, records["states"][rows, cols].astype(np.float32))
    assert counting.nbytes == 4 * (2 * np.prod(SHAPE) + 4) + 12 * N * 16 + 4


def test_whole_trajectories_keep_nan_before_n(shard, records):
    store, entry = shard
    group = open_checked(store, entry)
    out = read_trajectories(group, entry, 2, 7, records["start"][2:7])
    np.testing.assert_array_equal(out, records["states"][2:7].astype(np.float32))


def test_a_flipped_byte_fails_verification_and_every_read_of_it(shard):
    store, entry = shard
    path = store.full(f"{entry['path']}/states/c/0/0/0/0/0")
    data = bytearray(open(path, "rb").read())
    data[3] ^= 0x40  # inside the first stored chunk
    open(path, "wb").write(bytes(data))
    assert shard_problems(store, entry) == []  # same size: only checksums see it
    assert shard_problems(store, entry, full=True) == ["object states/c/0/0/0/0/0 fails its sha256 checksum"]
    index = np.frombuffer(bytes(data[-(12 * N * 16 + 4):-4]), "<u8").reshape(12, N, 2)  # (offset, nbytes) per chunk
    row, col = np.argwhere(index[..., 0] == 0)[0]  # the chunk written first in the object: the flipped one
    group = open_checked(store, entry)
    start = read_columns(group, entry, 0, 12)["start"]
    with pytest.raises(DamagedShardError, match="shard 1 .*records 10..21.*checksum"):
        read_trajectories(group, entry, 0, 12, start)
    with pytest.raises(DamagedShardError, match="shard 1"):
        read_states(group, entry, np.array([row]), np.array([col]))
    other = (row + 1) % 12
    read_states(group, entry, np.array([other]), start[other:other + 1])  # sound chunks still read


@pytest.mark.parametrize("damage", ["remove", "truncate"])
def test_a_missing_or_cut_object_is_refused_before_reading(shard, damage):
    store, entry = shard
    path = store.full(f"{entry['path']}/x0/c/0/0/0/0")
    if damage == "remove":
        store.remove(f"{entry['path']}/x0/c/0/0/0/0")
        problem = "missing object x0/c/0/0/0/0"
    else:
        open(path, "r+b").truncate(100)
        problem = "object x0/c/0/0/0/0 has 100 bytes"
    assert any(p.startswith(problem) for p in shard_problems(store, entry))
    with pytest.raises(DamagedShardError, match=problem):
        open_checked(store, entry)


def test_a_tampered_checksum_list_is_refused(shard):
    store, entry = shard
    store.write_bytes(f"{entry['path']}/{CHECKSUMS}", b"{}")
    assert shard_problems(store, entry) == [f"{CHECKSUMS} does not match the manifest"]


def test_leftovers_are_what_no_manifest_entry_uses(tmp_path, records):
    store = CacheStore(f"file://{tmp_path}/cache")
    assert store.local and store.url == str(tmp_path / "cache")
    kept = write_shard(store, 0, 10, 22, records, key="k")
    orphan = write_shard(store, 1, 10, 22, records, key="k")  # renamed, never listed: as after a kill
    (tmp_path / "cache/shards/.tmp-000002-dead.zarr").mkdir()
    store.write_bytes(".tmp-abc-manifest.json", b"{")
    manifest = {"shards": [kept]}
    assert sorted(leftovers(store, manifest)) == sorted([orphan["path"], "shards/.tmp-000002-dead.zarr",
                                                         ".tmp-abc-manifest.json"])
    remove_leftovers(store, manifest)
    assert leftovers(store, manifest) == [] and shard_problems(store, kept, full=True) == []
