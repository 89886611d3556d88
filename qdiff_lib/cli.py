"""Command line: ``python -m qdiff_lib run ...`` trains one model, samples from it and scores the samples.

``run`` writes, into ``--out DIR``:

* ``result.json``: ``config`` (every option, the training config and the model's settings), ``loss_history``
  (one loss per optimiser step), ``metrics`` (``qdiff_lib.metrics.evaluate``; ``{}`` with ``--no-metrics``),
  ``versions`` (of every package that produces a number), ``numerics`` (:func:`qdiff_lib.numerics.state`: the
  pinned kernels, torch's threads, the CPU), ``git_commit``, ``git_dirty``, ``timings`` (seconds), ``device``,
  ``n_parameters``, ``train``;
* ``samples.npz``: key ``samples``, float32 ``(n_samples, C, 28, 28)`` in [-1, 1], drawn from the EMA model;
* ``checkpoints/checkpoint.pt``: the training checkpoint. Re-running an interrupted command with the same
  options resumes from it.

Both result files are written atomically (a temporary file, then a rename). An existing ``result.json`` is never
overwritten without ``--force`` (which also discards the old checkpoint). Every option is validated, and the data
are loaded, before any training starts; a bad value stops the command with a message listing the allowed ones.

The same run is available from Python as :func:`qdiff_lib.experiment.run` with a
:class:`~qdiff_lib.experiment.RunOptions` (both importable from here too), whose fields define the options below.
``python -m qdiff_lib study`` runs the grids of :mod:`qdiff_lib.study`; ``python -m qdiff_lib calibrate`` computes
the floor and ceiling of every class the studies use (:mod:`qdiff_lib.metrics.calibrate`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qdiff_lib import numerics, rescore, study
from qdiff_lib.classifier import AUGMENTATIONS
from qdiff_lib.experiment import (
    CHECKPOINT_DIR,
    KEY_NEUTRAL,
    NUMERIC_PACKAGES,
    RESULT_NAME,
    SAMPLES_NAME,
    RunOptions,
    add_run_arguments,
    add_threads_argument,
    options_from_args,
    prepare,
    run,
    sampling_seed,
)
from qdiff_lib.train import NonFiniteError

# The names of qdiff_lib.experiment stay importable from here, where they were defined before it existed (the
# stored chapters import some of them).
__all__ = ["RunOptions", "KEY_NEUTRAL", "run", "build_parser", "main", "sampling_seed", "RESULT_NAME", "SAMPLES_NAME",
           "CHECKPOINT_DIR", "NUMERIC_PACKAGES", "add_threads_argument"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qdiff_lib",
        description="Experiments of the companion to arXiv:2504.00034 (quantum-bottleneck diffusion).",
        epilog=f"CPU numerics are pinned to AVX2 kernels so that results reproduce on every x86-64 CPU; set "
               f"{numerics.SWITCH}=native for the CPU's fastest kernels (see qdiff_lib.numerics).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = sub.add_parser(
        "run", help="train one model, sample from it, score the samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(run_parser)
    output = run_parser.add_argument_group("output")
    add_threads_argument(output)
    output.add_argument("--out", required=True, type=Path, help="output folder DIR")
    output.add_argument("--force", action="store_true", help="overwrite DIR/result.json and discard its checkpoint")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    study_parser = sub.add_parser(
        "study", help="run (or resume) the studies behind the book's chapters",
        description=study.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study.add_arguments(study_parser)
    add_threads_argument(study_parser)

    calibrate_parser = sub.add_parser(
        "calibrate", help="compute each class's floor and ceiling of every metric (the normalised KID's scale)",
        description="The floor and ceiling of every metric for every class the studies use, one JSON per class "
                    "under results/calibration/ (see qdiff_lib.metrics.calibrate; the metrics are imported only "
                    "when the command runs, so that the other commands start fast).",
    )
    add_calibrate_arguments(calibrate_parser)
    add_threads_argument(calibrate_parser)
    return parser


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m qdiff_lib calibrate`` (:func:`qdiff_lib.metrics.calibrate.main` reads them)."""
    p.add_argument("--dataset", default=None,
                   help="only this dataset's classes (default: every dataset the studies use)")
    p.add_argument("--label", type=int, default=None, help="only this class (default: every class the studies use)")
    p.add_argument("--draws", type=int, default=None,
                   help="redraws of every sample, at least 2 (default: qdiff_lib.metrics.calibrate.DRAWS)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every draw (default: qdiff_lib.metrics.calibrate.SEED)")
    p.add_argument("--classifier-augment", default=None, choices=AUGMENTATIONS,
                   help="only the files of the classifier trained with this augmentation, "
                        "<dataset>-l<label>+<augment>.json (none: the default classifier's <dataset>-l<label>.json), "
                        "for every selected class whether or not a study uses it (default: every classifier the "
                        "studies' runs of each class use, qdiff_lib.classifier_choice.ADOPTED_AUGMENT)")
    p.add_argument("--out", type=Path, default=None, help="folder of the files (default: results/calibration)")
    p.add_argument("--force", action="store_true", help="recompute the classes whose file exists")
    p.add_argument("--list", action="store_true", help="list the classes, their sizes and whether each is done")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        numerics.mode()
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    for problem in numerics.check():
        print(f"{parser.prog}: numerics not pinned: {problem}", file=sys.stderr)
    if args.command == "study":
        if args.force_rescore and not args.rescore:
            parser.error("--force-rescore needs --rescore")
        return (rescore.main if args.rescore else study.main)(args, parser)
    if args.command == "calibrate":
        from qdiff_lib.metrics import calibrate  # heavy (torchmetrics, scipy): only for this command

        return calibrate.main(args, parser)
    options = options_from_args(args)
    try:
        prepared = prepare(options, args.out, args.force)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        parser.error(str(error))
    command = ["python", "-m", "qdiff_lib", *(sys.argv[1:] if argv is None else argv)]
    try:
        record = prepared.execute(not args.no_progress, command)
    except NonFiniteError as error:
        print(f"{parser.prog} run: training diverged: {error}", file=sys.stderr)
        return 1
    except MemoryError as error:  # the simulators refuse before allocating, with the size in readable units
        print(f"{parser.prog} run: not enough memory: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / RESULT_NAME} and {args.out / SAMPLES_NAME} "
          f"({len(record['loss_history'])} steps, final loss {record['loss_history'][-1]:.4g})")
    return 0
