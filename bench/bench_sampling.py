"""Sampling: DDPM with all T = 1000 steps against DDIM with 50 steps, the same trained model; speed and metrics.

The model (the ``se`` arm of the paper's U-Net, cosine schedule) is trained for ``--train-steps`` on
``--n-train`` MNIST images of ``--digit``; its EMA weights then draw ``--n-samples`` images with each sampler
(same seed), and both sets are scored by :func:`qdiff_lib.metrics.evaluate` against held-out images of the
digit. The timing alternates one DDPM and one DDIM draw of ``--timing-batch`` images for ``--rounds`` rounds.
Goal (stated in the performance chapter): DDIM-50 at least 15x faster than DDPM-1000.
Usage: ``python -m bench sampling --train-steps 1000 --n-samples 200 --rounds 2 --json results/bench/sampling.json``.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import alternate, benchmark_parser, parse_options, print_table, save_json, summarize
from qdiff_lib.data import few_shot_split
from qdiff_lib.diffusion import Diffusion
from qdiff_lib.metrics import evaluate
from qdiff_lib.train import TrainConfig, train
from qdiff_lib.unet import UNet

#: The metrics compared between the samplers (means of ``evaluate``'s entries).
METRICS: tuple[str, ...] = ("kid", "fid", "precision", "recall", "density", "coverage", "class_consistency")


def run(train_steps: int = 300, n_train: int = 100, n_samples: int = 64, n_ref: int = 200, digit: int = 3,
        timesteps: int = 1000, ddim_steps: int = 50, timing_batch: int = 16, rounds: int = 1, seed: int = 0) -> dict:
    """Train, time both samplers alternately, score both sample sets; a dict of timing rows and metric rows."""
    images, reference = few_shot_split("mnist", digit, n_train=n_train, n_ref=n_ref, seed=seed)
    model = UNet(1, bottleneck="se", n_qubits=8, seed=seed)
    result = train(model, images, TrainConfig(steps=train_steps, timesteps=timesteps, seed=seed, device="cpu",
                                              checkpoint_every=0), progress=False)
    ema = result.ema_model.eval()
    diffusion = Diffusion.from_schedule("cosine", timesteps)

    def draw(sampler: str, batch: int, steps: int | None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return diffusion.sample(ema, (batch, 1, 28, 28), sampler=sampler, steps=steps, generator=g)

    ddpm, ddim = f"DDPM {timesteps}", f"DDIM {ddim_steps}"
    times = alternate({ddpm: lambda: draw("ddpm", timing_batch, None),
                       ddim: lambda: draw("ddim", timing_batch, ddim_steps)}, rounds, warmup=0)
    timing = summarize(times, reference=ddim)
    scores = {}
    for name, sampler, steps in ((ddpm, "ddpm", None), (ddim, "ddim", ddim_steps)):
        samples = draw(sampler, n_samples, steps)
        metrics = evaluate(samples, "mnist", digit, images, reference=reference, seed=seed)
        scores[name] = {m: float(metrics[m]["mean"]) for m in METRICS}
    metric_rows = [{"metric": m, "ddpm": scores[ddpm][m], "ddim": scores[ddim][m],
                    "ddim_minus_ddpm": scores[ddim][m] - scores[ddpm][m]} for m in scores[ddpm]]
    return {"timing": timing, "speedup": timing[0]["ratio"], "metrics": metric_rows}


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("sampling", __doc__)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-samples", type=int, default=64, help="images per sampler for the metrics")
    parser.add_argument("--n-ref", type=int, default=200, help="held-out real images for the metrics")
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--timing-batch", type=int, default=16, help="images per timed draw")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (one DDPM + one DDIM draw each)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    result = run(args.train_steps, args.n_train, args.n_samples, args.n_ref, args.digit, 1000, args.ddim_steps,
                 args.timing_batch, args.rounds)
    print(f"# sampling, batch {args.timing_batch}, {torch.get_num_threads()} torch threads "
          f"(goal: DDIM {args.ddim_steps} >= 15x faster than DDPM 1000)")
    print_table(result["timing"], [("name", "sampler", "s"), ("median_s", "median s", ".3f"), ("runs", "runs", "d"),
                                   ("ratio", "ratio to DDIM", ".1f")])
    print(f"# metrics of {args.n_samples} samples each (se arm, {args.train_steps} steps, digit {args.digit})")
    print_table(result["metrics"], [("metric", "metric", "s"), ("ddpm", "DDPM", ".4f"), ("ddim", "DDIM", ".4f"),
                                    ("ddim_minus_ddpm", "DDIM - DDPM", "+.4f")])
    if args.json:
        save_json(args.json, "sampling", result, vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
