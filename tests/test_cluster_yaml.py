import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from pipeline.config import load_config
from pipeline.resources import CLUSTER_RESOURCES

ROOT = Path(__file__).resolve().parents[1]
STANDARD = {"CPU", "GPU", "memory", "object_store_memory"}


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def pool(cluster, resource):
    [(name, node_type)] = [(n, t) for n, t in cluster["available_node_types"].items() if resource in t["resources"]]
    return name, node_type


def test_validates_against_rays_own_schema(cluster):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_head_takes_no_work_and_resources_are_integers(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    for t in types.values():
        assert all(type(v) is int and v >= 0 for v in t["resources"].values())


def test_each_stage_has_its_pool_and_the_stages_request_exactly_those(cluster):
    custom = {r for t in cluster["available_node_types"].values() for r in t["resources"]} - STANDARD
    assert custom == set(CLUSTER_RESOURCES.values())
    _, teacher = pool(cluster, CLUSTER_RESOURCES["teacher"])
    _, train = pool(cluster, CLUSTER_RESOURCES["train"])
    assert teacher["resources"]["teacher_gpu"] == teacher["resources"]["GPU"] == 1  # one unit per GPU
    assert train["resources"]["train_gpu"] == train["resources"]["GPU"] == 8
    assert teacher["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"  # cache shards are regenerated
    assert "InstanceMarketOptions" not in train["node_config"]  # long DDP runs stay on demand


@pytest.mark.parametrize("name", ["cifar10_uncond.yaml", "cifar10_cond.yaml", "imagenet64.yaml"])
def test_paper_configs_fit_their_pools(cluster, name):
    cfg = load_config(ROOT / "jobs" / "configs" / name)
    _, teacher = pool(cluster, CLUSTER_RESOURCES["teacher"])
    _, train = pool(cluster, CLUSTER_RESOURCES["train"])
    teacher_gpus = teacher["resources"]["teacher_gpu"] * teacher["max_workers"]
    assert cfg.cache.num_actors * cfg.cache.gpus_per_actor <= teacher_gpus
    assert cfg.eval.num_actors * cfg.eval.gpus_per_actor <= teacher_gpus
    assert cfg.cache.gpus_per_actor <= teacher["resources"]["teacher_gpu"]
    assert cfg.train.num_workers * cfg.train.gpus_per_worker <= train["resources"]["train_gpu"] * train["max_workers"]
    assert cfg.train.cpus_per_worker * train["resources"]["GPU"] <= train["resources"]["CPU"]


def test_installs_this_project_from_the_synced_copy_in_the_pinned_image(cluster):
    assert cluster["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    [(remote, local)] = cluster["file_mounts"].items()
    assert local == "." and cluster["setup_commands"] == [f"pip install -e {remote}"]
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all(f"cd {remote} &&" in c for c in starts if "ray start" in c)  # relative config paths resolve there
    assert f"ray[default,data,train,tune]=={ray.__version__}" in (ROOT / "pyproject.toml").read_text()
