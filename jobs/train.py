"""Train a CTM student on Ray Train (CTM + DSM, then the GAN stage from train.gan_start).

    python -m jobs.train --config jobs/configs/digits.yaml --set train.steps=2000 --set train.num_workers=2 \
        --local-cpus 8
    ray job submit --working-dir . -- python -m jobs.train --config ... --set train.storage_path=s3://bucket/runs

The official CIFAR-10 recipe is two runs (docs/method.md §3): CTM + DSM, then a GAN run started from its checkpoint with
θ⁻ reset to that checkpoint's 0.999 EMA, a fresh discriminator and step 0 (--from-checkpoint DIR does the reset):

    python -m jobs.train --config jobs/configs/cifar10_uncond.yaml
    python -m jobs.train --config jobs/configs/cifar10_uncond_gan.yaml \
        --from-checkpoint runs/cifar10_uncond/train/cifar10_uncond/checkpoint_0050000

Runs on the cluster `ray.init()` finds (RAY_ADDRESS under `ray job submit`, else a local one). Rerunning the same
command continues the run from its newest checkpoint; a finished run is found so without starting Ray. Exit status: 0 done, 2 bad input (nothing ran) or a
failure a retry would meet again (a non-finite loss, a damaged shard or checkpoint: one line names it), 1 training
failed beyond train.max_failures.
"""

import sys

import ray.train

from jobs.common import fail, input_errors, ray_cluster, stage_parser
from pipeline.config import load_config
from pipeline.preflight import preflight
from pipeline.train import run_training


FROM_CHECKPOINT_HELP = ("start a new run from another run's checkpoint (directory, checkpoint.pt or URL): sets "
                        "train.init_checkpoint=DIR and train.init_target=ema_0.999, the official θ⁻ reset")


def parser():
    p = stage_parser(__doc__, "train.lr=1e-4")
    p.add_argument("--from-checkpoint", metavar="DIR", help=FROM_CHECKPOINT_HELP)
    return p


def config(args):
    """The run's config: --config, then --from-checkpoint's two keys, then --set (which may override them)."""
    start = [] if args.from_checkpoint is None else [("train.init_checkpoint", args.from_checkpoint),
                                                     ("train.init_target", "ema_0.999")]
    return load_config(args.config, [*start, *args.set])


def main(argv=None):
    args = parser().parse_args(argv)
    try:  # every input, before Ray starts and before the run directory is written
        cfg = config(args)
        inputs = preflight(cfg, {"train"})
    except input_errors() as e:
        return fail(e, 2)
    print(cfg.dump(), flush=True)
    with ray_cluster(args.local_cpus) as start:
        try:
            result = run_training(cfg, inputs=inputs, start_ray=start)
        except input_errors() as e:
            return fail(e, 2)
        except ray.train.TrainingFailedError as e:
            return fail(f"training failed (more than train.max_failures={cfg.train.max_failures} failures): {e}\n"
                        "rerun the same command to continue from the newest checkpoint", 1)
    newest = result.checkpoint.path if result.checkpoint else "none"
    print(f"done: step {cfg.train.steps}; run directory {result.path}; newest checkpoint {newest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
