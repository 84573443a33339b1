"""The batch job's command line, one definition for ``python -m serve_app.batch`` and
``faceswap-serve batch``: :func:`add_batch_arguments` fills a parser, :func:`run_batch` runs the parsed
arguments and returns the exit code.

Quiet by default: one line while Ray starts, one while the actors load their models, one progress bar
(:class:`pipeline.progress.Progress`), one summary line on stderr and the JSON summary on stdout. Ray's own
logs (its INFO lines, worker output, Ray Data's messages) appear with ``--verbose`` only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from fractions import Fraction

from pipeline.cli import EXIT_CODES, add_swap_arguments, exit_code, swap_options_from_args, verbosity_parser
from pipeline.errors import FaceSwapError, InvalidOptionError
from pipeline.profiles import PipelineConfig
from pipeline.progress import Progress
from pipeline.sessions import PROVIDERS, SessionConfig
from pipeline.video import X264_PRESETS
from serve_app.batch.config import BatchJobConfig, BatchJobResult
from serve_app.local import RAY_ENV

DESCRIPTION = (
    "Swap the face of SOURCE into every frame of each TARGET video (or folder of frames) with Ray Data, "
    "writing one video per target with the source's audio. Paths may be pyarrow.fs URIs (s3://...). "
    "Prints progress on stderr and a JSON summary on stdout."
)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch job's positionals and options (swap options from :func:`pipeline.cli.add_swap_arguments`).
    ``-v/--verbose`` is not added here: the caller adds it (e.g. through
    :func:`pipeline.cli.verbosity_parser` as a parent) so that it works before and after a subcommand."""
    parser.add_argument("source", help="image with the source face (path or URI, e.g. s3://bucket/face.jpg)")
    parser.add_argument("targets", nargs="+", metavar="target", help="video file or folder of frames")
    parser.add_argument(
        "-o", "--output", required=True, help="output folder, or an .mp4/.mov/.mkv file for one target"
    )
    add_swap_arguments(parser)
    job = parser.add_argument_group("job")
    job.add_argument(
        "--providers",
        help=f"ONNX Runtime providers, any of {', '.join(PROVIDERS)} "
        "(default: cuda,cpu with --num-gpus, else cpu)",
    )
    job.add_argument("--batch-size", type=int, default=8, help="frames per model batch (default 8)")
    job.add_argument("--actors", type=int, default=1, help="swap actors in the pool (default 1)")
    job.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor, e.g. 0.5 (default 0)")
    job.add_argument(
        "--cpus-per-actor", type=float, default=1.0, help="CPUs per actor without GPUs (default 1)"
    )
    job.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per model call in each actor (default: the actor's CPUs)",
    )
    job.add_argument(
        "--address", help="Ray cluster to join, e.g. auto (under ray job submit); default: a local Ray"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--crf", type=int, default=18, help="H.264 quality, 0-51, lower is better (default 18)"
    )
    output.add_argument(
        "--preset", default="medium", choices=X264_PRESETS, help="x264 preset (default medium)"
    )
    output.add_argument(
        "--frames-fps", type=Fraction, default=Fraction(25), help="fps of the video of a folder of frames"
    )
    output.add_argument("--parquet", action="store_true", help="also write per-frame metadata as Parquet")
    output.add_argument("--parquet-images", action="store_true", help="store PNG frames in the Parquet too")
    output.add_argument(
        "--no-provenance",
        dest="provenance",
        action="store_false",
        help="do not label the outputs as synthetic",
    )
    output.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def build_parser(prog: str = "python -m serve_app.batch") -> argparse.ArgumentParser:
    """The standalone parser (``python -m serve_app.batch``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=EXIT_CODES, parents=[verbosity_parser()]
    )
    add_batch_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> BatchJobConfig:
    """The job :func:`add_batch_arguments`' flags describe (InvalidOptionError for bad values)."""
    providers = args.providers or ("cuda,cpu" if args.num_gpus > 0 else "cpu")
    pipeline = PipelineConfig(
        profile=args.profile,
        models_dir=args.models_dir,
        download=args.download,
        use_shared_assets=args.shared_assets,
        session=SessionConfig(providers=tuple(p for p in providers.split(",") if p)),
    )
    return BatchJobConfig(
        source_image=args.source,
        targets=tuple(args.targets),
        output=args.output,
        options=swap_options_from_args(args),
        pipeline=pipeline,
        reference_image=args.reference,
        batch_size=args.batch_size,
        num_actors=args.actors,
        num_gpus=args.num_gpus,
        cpus_per_actor=args.cpus_per_actor,
        intra_op_threads=args.threads,
        crf=args.crf,
        preset=args.preset,
        frames_fps=args.frames_fps,
        write_parquet=args.parquet or args.parquet_images,
        parquet_images=args.parquet_images,
        provenance=args.provenance,
    )


def _quiet_logging(verbose: bool) -> None:
    """Ray's INFO lines and Ray Data's messages (e.g. that its own progress bars are off) only with
    ``verbose``; the job's warnings and errors always."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        for name in ("ray", "ray.data"):  # Ray Data's logger has handlers of its own
            logging.getLogger(name).setLevel(logging.ERROR)


def _start_ray(config: BatchJobConfig, address: str | None, verbose: bool) -> None:
    """Join ``address`` or start a local Ray over this machine's CPUs (GPUs detected by Ray) and check that
    the actor pool fits in it."""
    import ray

    sys.stderr.write(f"starting Ray ({address or 'local'}) ...\n")
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
    )
    resources = ray.cluster_resources()
    need = config.actor_resources
    for kind, have in (("num_cpus", resources.get("CPU", 0.0)), ("num_gpus", resources.get("GPU", 0.0))):
        if address is None and need[kind] * config.num_actors > have:
            unit = kind.removeprefix("num_").upper()
            raise InvalidOptionError(
                f"{config.num_actors} actor(s) x {need[kind]:g} {unit} do not fit: Ray found "
                f"{have:g} {unit}(s) here; use fewer --actors"
            )


class _Bar:
    """The progress callback of the command line: a line saying what happens until the first frames are
    written, then a :class:`Progress` bar (created then, so that its rate and ETA are the steady pace)."""

    def __init__(self, actors: int, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Progress | None = None
        if enabled:
            sys.stderr.write(f"loading the models in {actors} swap actor(s) ...\n")

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            self._bar = Progress("frames", "frame")
        self._bar(done, total)


def _summary(result: BatchJobResult) -> str:
    """The closing line: the same frames, interval and rate as the progress bar (which starts when the
    first frames arrive), plus the start-up before it."""
    outputs = ", ".join(t.output for t in result.targets)
    return (
        f"{result.frames} frames ({result.faces_swapped} faces swapped, {result.frames_without_face} frames "
        f"without a face) in {result.elapsed_s - result.startup_s:.1f} s, {result.throughput_fps:.2f} "
        f"frames/s, after {result.startup_s:.1f} s of start-up; wrote {outputs}\n"
    )


def run_batch(args: argparse.Namespace) -> int:
    """Run the job that ``args`` (parsed with :func:`add_batch_arguments`) describe; returns the exit code.
    Joins the Ray this process is connected to (and leaves it running), ``--address`` when given, else
    starts a local Ray for the job."""
    verbose = bool(getattr(args, "verbose", False))
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    from serve_app.batch.job import run_batch_job

    _quiet_logging(verbose)  # after importing Ray Data, which configures its logger when imported
    owns_ray = False
    try:
        config = config_from_args(args)
        if not ray.is_initialized():
            owns_ray = True
            _start_ray(config, args.address, verbose)
        bar = _Bar(config.num_actors, args.progress)
        result = run_batch_job(config, bar)
    except FaceSwapError as error:
        sys.stderr.write(f"faceswap batch: error: {error.message}\n")
        return exit_code(error)
    finally:
        if owns_ray:
            ray.shutdown()
    if args.progress:
        sys.stderr.write(_summary(result))
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serve_app.batch``: parse ``argv`` and run; returns the exit code."""
    return run_batch(build_parser().parse_args(argv))
