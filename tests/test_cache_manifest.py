"""Cache keys, field differences and the shard layout (which shards a run must write)."""

import pytest

from pipeline.cache.errors import CacheMismatchError
from pipeline.cache.manifest import (cache_key, check_fields, differing_fields, key_fields, missing_shards,
                                     new_manifest, shard_ranges, with_entry)
from pipeline.config import load_config

TEACHER = {"kind": "gmm", "digest": "ab" * 32, "image_shape": [1, 8, 8], "label_dim": 0}
DATA = {"name": "digits", "digest": "cd" * 32, "num_images": 1797, "image_shape": [1, 8, 8], "num_classes": 10}


def fields(*overrides, teacher=TEACHER, data=DATA):
    return key_fields(load_config(overrides=list(overrides)), teacher, data)


def test_key_ignores_how_much_and_how_fast():
    base = cache_key(fields())
    assert len(base) == 20
    for o in ("cache.num_records=99", "cache.records_per_shard=7", "cache.batch_size=3", "cache.num_actors=5",
              "cache.root=elsewhere", "train.lr=1e-5"):
        assert cache_key(fields(o)) == base, o


@pytest.mark.parametrize("override, field", [
    ("cache.dtype=float32", "cache.dtype"), ("cache.seed=1", "cache.seed"), ("cache.mode=noise", "cache.mode"),
    ("grid.N=12", "grid.N"), ("grid.K=5", "grid.K"), ("grid.sigma_min=0.01", "grid.sigma_min"),
    ("grid.sigma_max=40", "grid.sigma_max"), ("grid.rho=5", "grid.rho")])
def test_key_changes_with_every_content_field(override, field):
    assert cache_key(fields(override)) != cache_key(fields())
    assert field in [k for k, _, _ in differing_fields(fields(), fields(override))]


def test_key_names_teacher_and_data_by_digest():
    assert cache_key(fields(teacher={**TEACHER, "digest": "ef" * 32})) != cache_key(fields())
    assert cache_key(fields(data={**DATA, "digest": "01" * 32})) != cache_key(fields())
    noise = fields("cache.mode=noise")
    assert noise["data"] == {"use_labels": False}  # no data enters a noise-mode record
    assert cache_key(fields("cache.mode=noise", data={**DATA, "digest": "01" * 32})) == cache_key(noise)
    cond = {**TEACHER, "label_dim": 10}
    assert fields("data.use_labels=true", teacher=cond)["data"]["use_labels"] is True
    assert fields("data.use_labels=true")["data"]["use_labels"] is False  # an unconditional teacher takes no labels


def test_mismatch_names_every_differing_field():
    manifest = new_manifest(fields(), 64, [80.0, 0.002], [1, 8, 8], {})
    check_fields(manifest, fields(), "here")
    with pytest.raises(CacheMismatchError) as e:
        check_fields(manifest, fields("cache.dtype=float32", "grid.rho=5"), "here")
    assert "cache.dtype: cache has 'float16', config gives 'float32'" in str(e.value)
    assert "grid.rho: cache has 7.0, config gives 5.0" in str(e.value)
    assert "grid.N" not in str(e.value)


def test_shard_ranges_end_with_one_short_shard():
    assert shard_ranges(10, 4) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert shard_ranges(8, 4) == [(0, 0, 4), (1, 4, 8)]


def test_missing_shards_resume_and_extend():
    m = new_manifest(fields(), 4, [80.0, 0.002], [1, 8, 8], {})
    assert missing_shards(m, 10) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    for s, a, b in [(0, 0, 4), (2, 8, 10)]:
        m = with_entry(m, {"shard": s, "start": a, "stop": b, "count": b - a})
    assert missing_shards(m, 10) == [(1, 4, 8)]                            # resume: only the gap
    assert missing_shards(m, 6) == [(1, 4, 6)]
    assert missing_shards(m, 13) == [(1, 4, 8), (2, 8, 12), (3, 12, 13)]  # extend: the short shard grows
    m = with_entry(m, {"shard": 2, "start": 8, "stop": 12, "count": 4})
    assert [e["shard"] for e in m["shards"]] == [0, 2] and m["shards"][1]["stop"] == 12
