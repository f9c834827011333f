"""The custom resources that put each stage on its pool of cluster.yaml's nodes.

cluster.yaml gives every teacher GPU node `teacher_gpu: 1` and every training node `train_gpu: 8` (one unit per
GPU). A stage adds `pool_request(pool, amount)` to its num_gpus request. On a cluster without the pool (a laptop, CI,
one GPU box) the request is empty, so nothing waits for nodes that do not exist.
"""

from pathlib import Path

import yaml

CLUSTER_RESOURCES = {
    "teacher": "teacher_gpu",  # trajectory-cache actors: one teacher per smaller GPU (spot)
    "train": "train_gpu",      # Ray Train workers: one per large GPU
    "eval": "teacher_gpu",     # evaluation actors share the smaller GPUs with the teacher pool
}
BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"  # written by `ray up` on the head node


def cluster_resource_names(available=None, bootstrap_config=BOOTSTRAP_CONFIG):
    """Resources the cluster has now or can launch: `available` (default ray.cluster_resources(), Ray initialised)
    plus those of every node type in the launcher's config on the head, since an autoscaling pool may have no node up
    when a stage starts."""
    if available is None:
        import ray
        available = ray.cluster_resources()
    names = {name for name, amount in available.items() if amount > 0}
    if Path(bootstrap_config).is_file():
        node_types = (yaml.safe_load(Path(bootstrap_config).read_text()) or {}).get("available_node_types", {})
        names |= {name for t in node_types.values() for name, amount in t.get("resources", {}).items() if amount > 0}
    return names


def pool_request(pool, amount, names=None):
    """{resource: amount} to add to a Ray resources request when the cluster has `pool`'s resource, else {}.

    names: the cluster's resource names (default `cluster_resource_names()`).
    """
    if pool not in CLUSTER_RESOURCES:
        raise ValueError(f"unknown pool {pool!r}; pick one of {sorted(CLUSTER_RESOURCES)}")
    name = CLUSTER_RESOURCES[pool]
    return {name: amount} if name in (cluster_resource_names() if names is None else names) else {}
