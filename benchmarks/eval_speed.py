"""Evaluation time per 1,000 samples: sampling from the student at each NFE, then clean-fid features and the FD.

    python -m benchmarks.eval_speed                    # CPU, digits default: tiny student, shipped digits features
    python -m benchmarks.eval_speed --features inception-proxy --net cifar10 --device cuda
        # CIFAR-10 sized: the paper-size DDPM++ student (random weights) and a random-weight Inception v3 of
        # clean-fid's shape, behind clean-fid's own 299×299 PIL resize (timing only: its FID means nothing)
"""

import argparse
import time

import numpy as np
import torch

from benchmarks.heun_throughput import CIFAR10_DDPMPP
from ctm.networks import tiny_songunet_kwargs
from ctm.student import build_ctm_student
from pipeline.config import load_config
from pipeline.evaluation.features import FeatureSet, digits_features, gray_to_rgb
from pipeline.datasets import load_dataset
from pipeline.evaluation.fid import Reference, cleanfid_features, fid, image_batches, statistics
from pipeline.evaluation.models import teacher_heun_batches, teacher_model
from pipeline.evaluation.settings import Setting, sample_batches


class ProxyInception(torch.nn.Module):
    """torchvision's Inception v3 with random weights: clean-fid's network shape and cost, pool3 (2048) output."""

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3
        self.net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = torch.nn.Identity()

    def forward(self, x):
        return self.net((x - 128) / 128)


def proxy_inception_features(device):
    from cleanfid.resize import build_resizer
    info = {"name": "random-weight inception v3 (timing only)", "dim": 2048}
    return FeatureSet(ProxyInception().to(device).eval(), build_resizer("clean"), gray_to_rgb, True, info)


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--features", default="digits", choices=["digits", "inception-proxy"])
    p.add_argument("--net", default="tiny", choices=["tiny", "cifar10"])
    p.add_argument("--num", type=int, default=1000, help="samples per setting")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (an actor with eval.cpus_per_actor=1 has one)")
    p.add_argument("--teacher", action="store_true", help="also time the digits mixture teacher's 34-NFE Heun")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"eval.num_samples={args.num}"])
    grid = cfg.grid.grid()
    kwargs = CIFAR10_DDPMPP if args.net == "cifar10" else tiny_songunet_kwargs(8, 1)
    G = build_ctm_student(**kwargs).to(args.device).eval().requires_grad_(False)
    shape = (G.img_channels, G.img_resolution, G.img_resolution)
    if args.features == "digits":
        fs = digits_features(args.device)
        real, _, _ = load_dataset(cfg.data)
        reference = Reference(*statistics(cleanfid_features(image_batches(real, args.batch), len(real), fs, args.batch,
                                                            args.device)))
    else:
        fs = proxy_inception_features(args.device)
        reference = Reference(*statistics(np.random.default_rng(0).normal(size=(4096, 2048))))
    print(f"{args.net} student {shape}, {fs.info['name']} features on {args.device}; {args.num} samples, "
          f"batch {args.batch}; seconds per 1,000 samples")
    per_1000 = 1000 / args.num
    runs = {f"NFE {n}, γ=0": lambda n=n: sample_batches(G, Setting(n, 0.0), grid, args.num, args.batch, 0, shape,
                                                        device=args.device) for n in args.nfe}
    if args.teacher:
        teacher, t_shape, label_dim, _ = teacher_model(cfg, args.device)
        runs[f"teacher Heun ({2 * (cfg.grid.N - 1)} NFE)"] = lambda: teacher_heun_batches(
            teacher, grid, args.num, args.batch, 0, t_shape, label_dim, args.device)
    for name, batches in runs.items():
        t_sample = t_feats = t_fd = float("inf")
        for _ in range(args.repeats):  # the fastest of the repeats; the first one warms up
            images, t = timed(lambda: torch.cat(list(batches())), args.device)
            t_sample = min(t_sample, t)
            feats, t = timed(lambda: cleanfid_features(image_batches(images, args.batch), args.num, fs, args.batch,
                                                       args.device), args.device)
            t_feats = min(t_feats, t)
            score, t = timed(lambda: fid(feats, reference), args.device)
            t_fd = min(t_fd, t)
        print(f"{name:28s} sampling {t_sample * per_1000:7.2f}  features {t_feats * per_1000:7.2f}  "
              f"FD {t_fd:6.2f}  total {(t_sample + t_feats) * per_1000 + t_fd:7.2f}   (FID {score:.4g})", flush=True)


if __name__ == "__main__":
    main()
