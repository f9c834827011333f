"""FID through clean-fid's own code: features by `get_model_features`, distance by `frechet_distance`.

Reference statistics come from the user's local dataset (or a given `.npz` with mu and sigma) and are cached on disk.
FD is biased by the sample count (docs/method.md, "The embedded default's teacher and features"), so every reference
carries the real-against-real FD of a disjoint split of the real images at the evaluation's sample count.
"""

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import fid_from_feats, frechet_distance, get_model_features

from pipeline.datasets import dataset_identity, open_dataset

from .features import file_digest, to_pixels


@dataclass
class Reference:
    mu: np.ndarray
    sigma: np.ndarray
    info: dict = field(default_factory=dict)           # what the statistics were computed from
    real_vs_real: dict = field(default_factory=dict)   # {"fd", "n", "against", "how"}


def cleanfid_features(batches, num, feature_set, batch_size, device="cpu"):
    """Features (num, D) of the [−1, 1] image batches `batches` yields, through clean-fid's generator path."""
    it = iter(batches)

    def gen(z):  # clean-fid calls gen(z) ceil(num / batch_size) times and keeps the first num images
        x = to_pixels(next(it), feature_set.quantize)
        if len(x) < batch_size:
            x = torch.cat([x, x[-1:].expand(batch_size - len(x), *x.shape[1:])])
        return x

    return get_model_features(gen, feature_set.extractor, mode="clean", z_dim=1, num_gen=num, batch_size=batch_size,
                              device=torch.device(device), verbose=False,
                              custom_image_tranform=feature_set.transform, custom_fn_resize=feature_set.resize)


def progress(line):
    """One progress line on stdout at once (an actor's stdout reaches the driver's log)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def statistics(feats):
    """mu and sigma exactly as clean-fid's compute_fid takes them."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def fid(feats, reference):
    mu, sigma = statistics(feats)
    return float(frechet_distance(mu, sigma, reference.mu, reference.sigma))


def real_vs_real(feats, n, seeds=(0,)):
    """FD between a random n′ = min(n, M/2) of the M real images and the other M − n′ (the count bias floor): the mean
    over one random split per seed."""
    n_a = min(n, len(feats) // 2)
    fds = []
    for seed in seeds:
        perm = np.random.default_rng(seed).permutation(len(feats))
        fds.append(float(fid_from_feats(feats[perm[:n_a]], feats[perm[n_a:]])))
    how = "disjoint random split of the real images" + (f", mean of {len(fds)} splits" if len(fds) > 1 else "")
    return {"fd": float(np.mean(fds)), "fds": fds, "n": int(n_a), "against": int(len(feats) - n_a), "how": how}


def image_batches(images, batch_size):
    """Batches of `images` (an array, or a `pipeline.datasets.ImageSource` read a batch at a time) as tensors."""
    for i in range(0, len(images), batch_size):
        yield torch.as_tensor(images[np.arange(i, min(i + batch_size, len(images)))])


def load_stats_npz(path, dim):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.reference_stats: no statistics file at {path}")
    with np.load(path) as f:
        if "mu" not in f.files or "sigma" not in f.files:
            raise ValueError(f"eval.reference_stats: {path} must hold arrays 'mu' and 'sigma' (clean-fid's format), "
                             f"found {f.files}")
        mu, sigma = f["mu"], f["sigma"]
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"eval.reference_stats: {path} holds statistics of {mu.shape[0]}-dim features, but the "
                         f"feature set gives {dim}; was it computed with other features?")
    return mu, sigma


def reference_key(cfg, feature_set, identity):
    stats = cfg.eval.reference_stats  # by path and content: a file rewritten in place is another reference
    stats = stats and [stats, file_digest(stats) if Path(stats).is_file() else None]
    parts = {"features": feature_set.info, "data": identity, "stats": stats,
             "n": cfg.eval.num_samples, "seeds": cfg.eval.seeds()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_reference(cfg, feature_set, device="cpu"):
    """Reference statistics and the real-against-real FD at eval.num_samples, from cache when computed before."""
    images = open_dataset(cfg.data)  # read a batch at a time, and only when the statistics are not cached
    identity = dataset_identity(cfg.data, images)
    key = reference_key(cfg, feature_set, identity)
    cache = Path(cfg.eval.reference_cache or Path(cfg.eval.out) / "references") / f"reference-{key}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            meta = json.loads(str(f["meta"]))
            return Reference(f["mu"], f["sigma"], meta["info"], meta["real_vs_real"])
    progress(f"[eval] reference statistics: features of {len(images)} {cfg.data.name} images "
             f"({feature_set.info['name']}), cached afterwards in {cache}")
    started = time.perf_counter()
    feats = cleanfid_features(image_batches(images, cfg.eval.batch_size), len(images), feature_set,
                              cfg.eval.batch_size, device)
    progress(f"[eval] reference statistics: {len(images)} images in {time.perf_counter() - started:.1f} s")
    info = {"dataset": cfg.data.name, "identity": identity, "count": len(images), "features": feature_set.info["name"]}
    if cfg.eval.reference_stats:
        mu, sigma = load_stats_npz(cfg.eval.reference_stats, feats.shape[1])
        info.update(source=str(cfg.eval.reference_stats), count=None)
    else:
        mu, sigma = statistics(feats)
        info.update(source="computed from the local dataset")
    reference = Reference(mu, sigma, info, real_vs_real(feats, cfg.eval.num_samples, cfg.eval.seeds()))
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"info": info, "real_vs_real": reference.real_vs_real}, default=str)
    tmp = cache.with_name(f".{cache.stem}.tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, meta=np.array(meta))
    tmp.rename(cache)
    return reference

