"""Peak memory of the cache's driver and of one teacher actor against dataset size (the digits replicated 1×, 10×, 100×).

    python -m benchmarks.dataset_memory [--scales 1 10 100] [--records 256]

Each size is a folder of 8×8 greyscale PNGs (the 1,797 digits repeated, one subfolder per class) written under a
temporary folder, read with data.name=folder by the digits mixture teacher. Each measured process is a fresh
subprocess, so its peak resident set (ru_maxrss) is its own:
  driver   what generate's driver does before the actors start: `prepare` (the dataset opened and named by its files,
           the teacher's identity, the manifest) and the key that `open_cache` computes; nothing remembered yet
  actor    a teacher actor (`ShardSolver`): the teacher built, the dataset opened, one shard of --records solved
  whole    `load_dataset`: the whole dataset in float32, as every one of those processes held it before streaming
Printed per size: peak RSS (MB), its growth over the process's RSS after imports, the seconds taken, and each peak
as a ratio to the 1× peak; then the peak's growth per added image. The driver and actor stay flat (what grows is the
file listing, tens of bytes per image) while `whole` grows with the data (here 256 B of float32 per 8×8 image; 48 KiB
per ImageNet-64 image).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROLES = ("driver", "actor", "whole")


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def write_folder(root, scale):
    """The digits `scale` times as PNGs under root/<label>/, in 8-bit grey (0..16 scaled to 0..255)."""
    from PIL import Image

    from ctm.digits import load_digits_images
    images, labels = load_digits_images()
    pixels = np.round((images[:, 0] + 1) * 127.5).astype(np.uint8)
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    for copy in range(scale):
        for i, (arr, label) in enumerate(zip(pixels, labels)):
            Image.fromarray(arr).save(root / str(label) / f"{copy:03d}-{i:04d}.png")
    return root


def config(folder, teacher, work, records):
    from pipeline.config import load_config
    return load_config(overrides=["data.name=folder", f"data.path={folder}", f"teacher.path={teacher}",
                                  f"cache.root={work}/caches", f"cache.num_records={records}",
                                  f"cache.records_per_shard={records}", "cache.batch_size=256"])


def measure(role, folder, teacher, work, records):
    """Run one role in this process; returns {"peak", "base", "seconds"}."""
    import torch
    torch.set_num_threads(1)
    from pipeline.cache import config_key_fields
    from pipeline.cache.generate import ShardSolver, TeacherFactory, prepare
    from pipeline.datasets import load_dataset
    from pipeline.teachers import configured_teacher_identity
    cfg = config(folder, teacher, work, records)
    base, start = rss_mb(), time.perf_counter()
    if role == "driver":
        _, _, fields, fingerprint = prepare(cfg, configured_teacher_identity(cfg), log=lambda *_: None)
        assert config_key_fields(cfg) == fields
        Path(work, "driver.json").write_text(json.dumps({"fields": fields, "fingerprint": fingerprint}))
    elif role == "actor":
        handed = json.loads(Path(work, "driver.json").read_text())
        solver = ShardSolver(cfg, TeacherFactory(cfg), handed["fields"], handed["fingerprint"], "cpu")
        out = solver({"shard": np.array([0]), "shard_start": np.array([0]), "shard_stop": np.array([records])})
        assert out["states"].shape[:2] == (1, records)
    else:
        images, _, _ = load_dataset(cfg.data)
        assert images.dtype == np.float32
    return {"peak": rss_mb(), "base": base, "seconds": time.perf_counter() - start}


def run_role(role, folder, teacher, work, records):
    env = {**os.environ, "CTM_DIGEST_CACHE": str(Path(work) / f"memo-{role}"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.dataset_memory", "--measure", role, "--folder",
                          str(folder), "--teacher", str(teacher), "--work", str(work), "--records", str(records)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--records", type=int, default=256, help="records of the actor's shard")
    p.add_argument("--measure", choices=ROLES, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.folder, args.teacher, args.work, args.records)))
        return None
    from ctm.digits import fit_digits_teacher
    results = {}
    with tempfile.TemporaryDirectory(prefix="dataset-memory-") as tmp:
        teacher = Path(tmp) / "digits_gmm.npz"
        fit_digits_teacher().save(teacher)
        for scale in args.scales:
            started = time.perf_counter()
            folder = write_folder(Path(tmp) / f"digits-x{scale}", scale)
            made = time.perf_counter() - started
            work = Path(tmp) / f"work-x{scale}"
            work.mkdir()
            results[scale] = {role: run_role(role, folder, teacher, work, args.records) for role in ROLES}
            print(f"digits x{scale}: {1797 * scale} images written in {made:.0f} s", flush=True)
    first = results[args.scales[0]]
    print(f"\n{'images':>8} | " + " | ".join(f"{role + ' peak MB (+growth) s':>28}" for role in ROLES)
          + " | " + " | ".join(f"{role + ' ratio':>12}" for role in ROLES))
    for scale, r in results.items():
        cells = [f"{r[x]['peak']:8.0f} (+{r[x]['peak'] - r[x]['base']:6.1f}) {r[x]['seconds']:6.1f}" for x in ROLES]
        ratios = [f"{r[x]['peak'] / first[x]['peak']:12.2f}" for x in ROLES]
        print(f"{1797 * scale:8d} | " + " | ".join(f"{c:>28}" for c in cells) + " | " + " | ".join(ratios))
    last, added = results[args.scales[-1]], 1797 * (args.scales[-1] - args.scales[0])
    if added:
        print("peak growth per added image: " + ", ".join(
            f"{role} {(last[role]['peak'] - first[role]['peak']) * 2 ** 20 / added:.0f} B" for role in ROLES))
    return results


if __name__ == "__main__":
    main()
