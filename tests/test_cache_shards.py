"""One shard on disk: its Zarr layout, commit, checksums, partial reads, and refusal of damage."""

import json

import numpy as np
import pytest
import zarr

from conftest import make_gmm
from ctm.schedule import Grid
from pipeline.cache.cache import leftovers, remove_leftovers
from pipeline.cache.errors import DamagedShardError, NonFiniteStatesError
from pipeline.cache.records import RecordSpec, make_records
from pipeline.cache.shardcodec import EMPTY, encode_shard
from pipeline.cache.shards import CHECKSUMS, ShardReader, shard_problems, write_shard
from pipeline.cache.source import iter_pairs
from pipeline.storage import Folder

N, SHAPE, STATES = 8, (1, 4, 4), "states/c/0/0/0/0/0"
CHUNK, INDEX = 2 * 16 + 4, 12 * N * 16 + 4  # a float16 state + crc32c; the states index + crc32c


def spec(mode):
    return RecordSpec(seed=0, grid=Grid(N), mode=mode, image_shape=SHAPE,
                      hflip=True, conditional=False, label_dim=0, dtype="float16", compute_dtype="float64")


@pytest.fixture(scope="module")
def records():
    images = np.random.default_rng(0).uniform(-1, 1, (30, *SHAPE)).astype(np.float32)
    return make_records(spec("data"), make_gmm(16, seed=4), images, np.arange(30) % 10, range(10, 22), batch_size=5)


@pytest.fixture
def shard(tmp_path, records):
    store = Folder(tmp_path / "cache")
    return store, write_shard(store, 1, 10, 22, records, key="k")


class CountingStore(Folder):
    """Counts the bytes of ranged reads."""
    nbytes = 0

    def read_ranges(self, rel, starts, ends):
        out = super().read_ranges(rel, starts, ends)
        CountingStore.nbytes += sum(map(len, out))
        return out


def test_shard_is_committed_whole_with_checksums(shard, records):
    store, entry = shard
    assert entry["path"].startswith("shards/000001-")
    assert (entry["start"], entry["stop"], entry["count"]) == (10, 22, 12)
    assert store.listdir("shards") == [entry["path"].split("/")[1]]  # the temporary name is gone
    sums = json.loads(store.read_bytes(f"{entry['path']}/{CHECKSUMS}"))
    assert {"zarr.json", "states/zarr.json", STATES, "x0/c/0/0/0/0", "index/c/0"} <= set(sums)
    assert shard_problems(store, entry, full=True) == []
    group = zarr.open_group(store.full(entry["path"]), mode="r")  # any Zarr v3 reader
    assert group.attrs["start"] == 10 and group["states"].dtype == np.float16
    assert group["states"].chunks == (1, 1, *SHAPE) and group["states"].shards == (12, N, *SHAPE)
    for name, a in records.items():
        np.testing.assert_array_equal(group[name][:], a)


def test_our_shard_bytes_are_zarr_python_s(tmp_path, records):
    for name, axes in (("states", 2), ("x0", 1)):
        data = records[name]
        a = zarr.open_group(tmp_path / "z", mode="a").create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=(1,) * axes + data.shape[axes:], shards=data.shape,
            compressors=[zarr.codecs.Crc32cCodec()], fill_value=np.nan)
        a[...] = data
        ours = encode_shard(data, axes)
        theirs = (tmp_path / "z" / name / "c" / "/".join("0" * data.ndim)).read_bytes()
        assert len(ours) == len(theirs)  # the same chunks stored; zarr orders them in Morton order, we in C order
        num = int(np.prod(data.shape[:axes]))
        ours_index, theirs_index = (np.frombuffer(b[-(16 * num + 4):-4], "<u8").reshape(num, 2) for b in (ours, theirs))
        for (o, n), (o2, n2) in zip(ours_index, theirs_index):
            assert n == n2 and (n == EMPTY or ours[o:o + n] == theirs[o2:o2 + n2])


def test_states_before_n_are_not_stored(shard, records):
    store, entry = shard
    stored = int((N - records["start"]).sum())
    assert store.objects(entry["path"])[STATES] == stored * CHUNK + INDEX


def test_two_states_read_two_chunks_and_the_index_once(shard, records):
    store, entry = shard
    reader = ShardReader(CountingStore(store.url), entry)
    start = reader.columns(0, 12)["start"]
    CountingStore.nbytes = 0
    rows = np.array([0, 5, 0, 5])
    cols = np.array([start[0], start[5], N - 1, N - 1])
    np.testing.assert_array_equal(reader.states(rows, cols), records["states"][rows, cols].astype(np.float32))
    assert CountingStore.nbytes == 4 * CHUNK + INDEX
    reader.states(rows, cols)
    assert CountingStore.nbytes == 8 * CHUNK + INDEX


def test_whole_trajectories_keep_nan_before_n(shard, records):
    reader = ShardReader(*shard)
    out = reader.trajectories(2, 7, records["start"][2:7])
    np.testing.assert_array_equal(out, records["states"][2:7].astype(np.float32))
    np.testing.assert_array_equal(reader.columns(3, 9)["x0"], records["x0"][3:9])


def test_pairs_of_a_noise_shard_draw_n_at_read_time(tmp_path):
    rec = make_records(spec("noise"), make_gmm(16, seed=4), None, None, range(40), batch_size=40)
    assert (rec["start"] == 0).all() and (rec["label"] == -1).all() and not rec["x0"].any()
    store = Folder(tmp_path)
    reader = ShardReader(store, write_shard(store, 0, 0, 40, rec, key="k"))
    batch, = iter_pairs(reader, 0, 40, mode="noise", N=N, K=N - 1, epoch=0, seed=0)
    assert len(set(batch["n"].tolist())) > 2 and (batch["n"] + batch["k"] <= N - 1).all()
    states = rec["states"].astype(np.float32)
    np.testing.assert_array_equal(batch["x_t"], states[np.arange(40), batch["n"]])
    np.testing.assert_array_equal(batch["x_u"], states[np.arange(40), batch["n"] + batch["k"]])


def test_a_flipped_byte_fails_verification_and_every_read_of_it(shard):
    store, entry = shard
    path = store.full(f"{entry['path']}/{STATES}")
    data = bytearray(open(path, "rb").read())
    data[3] ^= 0x40  # inside the first stored chunk
    open(path, "wb").write(bytes(data))
    assert shard_problems(store, entry) == []  # same size: only checksums see it
    assert shard_problems(store, entry, full=True) == [f"object {STATES} fails its sha256 checksum"]
    index = np.frombuffer(bytes(data[-INDEX:-4]), "<u8").reshape(12, N, 2)  # (offset, nbytes) per inner chunk
    row, col = np.argwhere(index[..., 0] == 0)[0]  # the chunk stored first: the flipped one
    reader = ShardReader(store, entry)
    start = reader.columns(0, 12)["start"]
    with pytest.raises(DamagedShardError, match="shard 1 .*records 10..21.*crc32c"):
        reader.trajectories(0, 12, start)
    with pytest.raises(DamagedShardError, match="shard 1"):
        reader.states(np.array([row]), np.array([col]))
    other = (row + 1) % 12
    reader.states(np.array([other]), start[other:other + 1])  # sound chunks still read
    with pytest.raises(ValueError, match="checksum do not match"):
        zarr.open_group(store.full(entry["path"]), mode="r")["states"][row, col]  # zarr-python refuses it too


def test_a_damaged_index_or_a_missing_chunk_is_refused(shard, records):
    store, entry = shard
    path = store.full(f"{entry['path']}/{STATES}")
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(DamagedShardError, match="index fails its crc32c"):
        ShardReader(store, entry).states(np.array([0]), records["start"][:1])


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
        ShardReader(store, entry)


def test_the_writer_refuses_non_finite_states_before_writing_anything(tmp_path, records):
    store = Folder(tmp_path / "cache")
    n = records["start"][3]
    bad = {**records, "states": records["states"].copy()}
    bad["states"][3, n + 1, 0, 2, 2] = np.inf
    bad["states"][5, records["start"][5], 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteStatesError, match=rf"^record 13 holds NaN or Inf in its state {n + 1} on the grid "
                                                   rf"\(the teacher's Heun solve from n = {n}\).*Nothing of shard 1 "
                                                   rf"\(records 10..21\) was written$"):
        write_shard(store, 1, 10, 22, bad, key="k")
    assert store.listdir() == []
    assert np.isnan(records["states"][3, :n]).all()
    write_shard(store, 1, 10, 22, records, key="k")  # NaN before n is the fill, not a non-finite state


def test_a_tampered_checksum_list_is_refused(shard):
    store, entry = shard
    store.write_bytes(f"{entry['path']}/{CHECKSUMS}", b"{}")
    assert shard_problems(store, entry) == [f"{CHECKSUMS} does not match the manifest"]


def test_leftovers_are_what_no_manifest_entry_uses(tmp_path, records):
    store = Folder(f"file://{tmp_path}/cache")
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
