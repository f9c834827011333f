"""Export a checkpoint's student (one EMA's weights) as safetensors, with what rebuilds and samples it; no Ray.

    python -m jobs.export --checkpoint runs/train/digits/checkpoint_0000800 [--ema-rate 0.999] [--out FILE.safetensors]

The file holds the CTMPrecond state dict and, in its metadata, the network's constructor arguments, the EMA rate, the
run's grid (σ_min, σ_max, ρ, N), the training step and the checkpoint's sha256 (docs/export.md). Sample from it with
`python -m jobs.sample --export FILE`.
"""

import argparse
import sys

from jobs.common import fail
from pipeline.export import ExportError, export_student


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (or its checkpoint.pt)")
    p.add_argument("--ema-rate", type=float, default=0.999,
                   help="the EMA to export, one of the run's train.ema_rates (0: the online weights θ)")
    p.add_argument("--out", help="output .safetensors file or folder (default: <run>_<checkpoint>_ema<rate>"
                                 ".safetensors in the working directory)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        out, info = export_student(args.checkpoint, args.ema_rate, args.out)
    except (ExportError, FileNotFoundError) as e:
        return fail(e, 2)
    except OSError as e:  # the write itself failed (disk full ...): no file is left behind
        return fail(e, 1)
    print(f"exported: {out} (step {info['step']}, EMA {info['ema_rate']:g}, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
