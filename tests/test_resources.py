from pathlib import Path

import pytest

from pipeline.resources import CLUSTER_RESOURCES, cluster_resource_names, pool_request

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_pool_request_only_where_the_cluster_has_the_pool():
    names = {"CPU", "GPU", "teacher_gpu"}
    assert pool_request("teacher", 1, names) == {"teacher_gpu": 1}
    assert pool_request("eval", 0.25, names) == {"teacher_gpu": 0.25}
    assert pool_request("train", 1, names) == {}
    with pytest.raises(ValueError, match="unknown pool 'gpu'"):
        pool_request("gpu", 1, names)


def test_autoscaling_pools_count_before_any_node_is_up(tmp_path):
    local = {"CPU": 8.0, "memory": 1e9, "GPU": 0.0}
    assert cluster_resource_names(local, tmp_path / "absent.yaml") == {"CPU", "memory"}
    names = cluster_resource_names(local, CLUSTER_YAML)  # `ray up` puts this file on the head as the bootstrap config
    assert set(CLUSTER_RESOURCES.values()) <= names
    assert pool_request("train", 1, names) == {"train_gpu": 1}
