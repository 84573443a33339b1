"""Run one batch job on the connected Ray cluster: plan the targets, stream their frames through the
decode and swap stages of Ray Data (:mod:`.decode`, :mod:`.swap`), and write the results in order in
the driver (:mod:`serve_app.batch.sink`).

    pieces (one small row per batch of frames) -> DecodeFrames (one actor, each video in order)
        -> SwapFrames (actor pool: models built once per actor) -> driver: VideoWriter + sidecar + Parquet

With ``tracking`` (the default), a planner actor (:mod:`.plan`) makes pass 1 over the targets in job
order beside the dataset; the swap actors wait for a target's plan when its first frames reach them and
swap with its faces, so a target's faces flow through the whole video in order while its swaps stay
parallel and batched.

Each decoded frame crosses the object store twice (decoder -> swap actor -> driver), the minimum with the
decoding, the models and the encoding in three processes that work at the same time. Order is preserved
end to end; blocks are one batch each. Every piece is a small task and the object store budget holds a few
batches per actor, so Ray Data stops submitting pieces to the decoder while the swap actors are behind and
memory does not grow with the length of the video (one task per whole video would defeat that: Ray Data
budgets tasks, not the blocks a running task streams).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray.data import ActorPoolStrategy, DataContext
from ray.util.annotations import RayDeprecationWarning

from pipeline.errors import FaceSwapError
from pipeline.imageio import decode_image
from serve_app.batch.config import BatchJobConfig, BatchJobResult
from serve_app.batch.decode import DecodeFrames, FrameSource, piece_rows
from serve_app.batch.plan import FacePlanner
from serve_app.batch.sink import Progress, write_outputs
from serve_app.batch.storage import read_bytes
from serve_app.batch.swap import SwapFrames
from serve_app.batch.targets import TargetPlan, plan_targets
from serve_app.errors import unwrap

MIN_OBJECT_STORE_BUDGET = 64 * 1024 * 1024
TASKS_IN_FLIGHT_PER_ACTOR = 2
"""Batches queued at each swap actor: one being swapped, the next one ready."""
BUDGET_BATCHES_PER_ACTOR = 8
BUDGET_BATCHES_SHARED = 8


def object_store_budget(config: BatchJobConfig, batch_bytes: int) -> int:
    """Object store bytes the job's dataset may use, whatever the length of the videos: 8 batches per swap
    actor plus 8 (at least :data:`MIN_OBJECT_STORE_BUDGET`). Ray Data reserves half of the budget, split
    between the two stages (half of each share for finished outputs), and shares the rest; with less (6
    batches for one actor) the swap actor waited for budget between batches (71% busy on a 600-frame 720p
    video, 97% with 16), and the decoder runs at most a few batches ahead either way."""
    return max(
        MIN_OBJECT_STORE_BUDGET,
        batch_bytes * (BUDGET_BATCHES_PER_ACTOR * config.num_actors + BUDGET_BATCHES_SHARED),
    )


@contextmanager
def _job_context(config: BatchJobConfig, batch_bytes: int) -> Iterator[None]:
    """The DataContext of datasets created inside (each dataset keeps a copy of the context it was
    created with): order preserved, one batch per block, the object store budget, no progress bars or
    execution banners (the caller reports progress), the UDFs' own exceptions raised. The process-wide
    context is restored on exit."""
    context = DataContext.get_current()
    options = context.execution_options
    names = (
        "target_max_block_size",
        "enable_progress_bars",
        "print_on_execution_start",
        "raise_original_map_exception",
        "max_tasks_in_flight_per_actor",
    )
    saved = {name: getattr(context, name) for name in names}
    saved_options = (options.preserve_order, options.resource_limits)
    budget = object_store_budget(config, batch_bytes)
    options.preserve_order = True
    options.resource_limits = options.resource_limits.copy(
        object_store_memory=min(budget, options.resource_limits.object_store_memory)
    )
    # A block is shaped when it grows past the target, and split only at 1.5x the target: a target just
    # under one batch makes each batch of the largest frames exactly one block.
    context.target_max_block_size = batch_bytes * 9 // 10
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True
    context.max_tasks_in_flight_per_actor = TASKS_IN_FLIGHT_PER_ACTOR
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        options.preserve_order, options.resource_limits = saved_options


def _actor_stage(dataset: ray.data.Dataset, udf: type, **options: Any) -> ray.data.Dataset:
    """``dataset.map_batches(udf, ...)`` on stateful actors that are never restarted: a failure fails the
    job. With restarts, an actor killed for memory is restarted (and its batch retried) without end, and
    Ray cannot reliably restart an actor whose constructor arguments are in the object store
    (ray-project/ray#53727), where Ray Data puts its transformer (and says so on the console)."""
    with warnings.catch_warnings():
        # max_restarts has no named parameter in Ray 2.60 and the generic one warns
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return dataset.map_batches(udf, batch_format="numpy", max_restarts=0, **options)


def _driver_node() -> dict[str, str]:
    """The label selector of the driver's node, where the staged inputs are."""
    return {"ray.io/node-id": ray.get_runtime_context().get_node_id()}


@contextmanager
def face_plans(
    config: BatchJobConfig, sources: list[FrameSource], reference: bytes | None
) -> Iterator[tuple[ray.ObjectRef, ...] | None]:
    """With ``tracking``: a planner actor on the driver's node (no CPU slot of its own, like the decoder)
    asked for every target's plan in job order; yields the plans' object references (None without
    tracking). The planner is ended when the block ends."""
    if not config.options.tracking:
        yield None
        return
    planner: Any = (  # an ActorHandle, which mypy cannot follow through ray.remote
        ray.remote(FacePlanner)
        .options(num_cpus=0, max_restarts=0, label_selector=_driver_node())
        .remote(config.pipeline, config.options, reference)
    )
    try:
        yield tuple(planner.plan.remote(source) for source in sources)
    finally:
        ray.kill(planner)


def build_dataset(
    config: BatchJobConfig,
    plans: list[TargetPlan],
    source: bytes,
    reference: bytes | None,
    faces: tuple[ray.ObjectRef, ...] | None = None,
) -> ray.data.Dataset:
    """The job's dataset: swapped frame batches of every target, in order (:mod:`.decode`, :mod:`.swap`);
    ``faces``: each target's face plan (:func:`face_plans`)."""
    batch_bytes = config.batch_size * max(p.frame_bytes for p in plans)
    with _job_context(config, batch_bytes):
        pieces = piece_rows([(i, chunk) for i, plan in enumerate(plans) for chunk in plan.chunks])
        frames = _actor_stage(
            ray.data.from_items(pieces, override_num_blocks=len(pieces)),
            DecodeFrames,
            fn_constructor_kwargs={"sources": [p.source for p in plans]},
            batch_size=1,
            compute=ActorPoolStrategy(size=1),
            # light next to the models: no CPU slot of its own, so the swap actors can take every core
            num_cpus=0,
            # the staged inputs are on the driver's node
            label_selector=_driver_node(),
        )
        return _actor_stage(
            frames,
            SwapFrames,
            fn_constructor_kwargs={
                "pipeline": config.actor_pipeline,
                "options": config.options,
                "images": (ray.put(source), None if reference is None else ray.put(reference)),
                "plans": faces,
            },
            batch_size=config.batch_size,
            compute=ActorPoolStrategy(size=config.num_actors),
            **config.actor_resources,
        )


def run_batch_job(config: BatchJobConfig, progress: Progress | None = None) -> BatchJobResult:
    """Run one batch job on the connected Ray cluster (Ray Data starts a local one when none is).

    ``progress(done, total)`` is called as frames are written. Raises the typed errors of
    :mod:`pipeline.errors`, also for failures inside Ray workers: InvalidInputError /
    UnsupportedMediaError for bad inputs, NoFaceError when the source image has no face,
    InvalidOptionError, ModelNotFoundError, ... Outputs of targets finished before an error are kept; the
    failing target's partial files are deleted.
    """
    started = time.monotonic()
    report = progress if progress is not None else _silent
    source = read_bytes(config.source_image)
    decode_image(source, field=f"source_image {config.source_image}")
    reference = None
    if config.reference_image:
        reference = read_bytes(config.reference_image)
        decode_image(reference, field=f"reference_image {config.reference_image}")
    with tempfile.TemporaryDirectory(prefix="faceswap-batch-") as tmp:
        staging = Path(tmp)
        plans = plan_targets(config, staging)
        try:
            with face_plans(config, [p.source for p in plans], reference) as faces:
                dataset = build_dataset(config, plans, source, reference, faces)
                batches = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
                written = write_outputs(batches, plans, config, staging, report)
        except Exception as error:
            typed = unwrap(error)
            if isinstance(typed, FaceSwapError) and typed is not error:
                raise typed from None
            raise
    return BatchJobResult(
        written.targets, written.components, time.monotonic() - started, written.first_frames_at - started
    )


def _silent(done: int, total: int) -> None:
    """The default progress report: none."""
