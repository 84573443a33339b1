"""What one batch job does (:class:`BatchJobConfig`) and what it wrote (:class:`BatchJobResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import PurePosixPath

from pipeline.errors import InvalidOptionError
from pipeline.options import SwapOptions
from pipeline.profiles import PipelineConfig
from pipeline.sessions import SessionConfig
from pipeline.video import X264_PRESETS

VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")
"""An ``output`` ending in one of these is the output file of a single target; anything else is a folder."""


def is_file_output(output: str) -> bool:
    """Whether ``output`` names one output video rather than a folder."""
    return PurePosixPath(output.rstrip("/")).suffix.lower() in VIDEO_OUTPUT_SUFFIXES


@dataclass(frozen=True, kw_only=True)
class BatchJobConfig:
    """What one batch job does. Paths are local paths or ``pyarrow.fs`` URIs (``file://``, ``s3://``)."""

    source_image: str
    """Image with the face to put into the targets (its largest face)."""
    targets: tuple[str, ...]
    """Video files and/or folders of frames (image files, in name order); a single string is accepted."""
    output: str
    """Output folder (``<name>.mp4`` per target; ``.mkv`` for sources other than MP4/MOV/MKV), or an
    output file ending in .mp4/.mov/.mkv when there is one target."""
    options: SwapOptions = field(default_factory=SwapOptions)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    reference_image: str | None = None
    """Image of the target person, required by ``face_selector_mode="reference"``."""
    batch_size: int = 8
    """Frames per model batch (and per block between the stages)."""
    num_actors: int = 1
    """Size of the swap actor pool."""
    num_gpus: float = 0.0
    """GPUs per actor, fractional allowed (0.5: two actors share one GPU). With GPUs, actors take no CPU."""
    cpus_per_actor: float = 1.0
    """CPUs per actor when ``num_gpus`` is 0."""
    intra_op_threads: int = 0
    """ONNX Runtime threads per model call in each actor; 0: the actor's CPUs rounded up (1 with GPUs).
    Idle threads never spin: actors share cores with the decoder and the encoder."""
    crf: int = 18
    preset: str = "medium"
    frames_fps: Fraction = Fraction(25)
    """Frame rate of the video written for a folder-of-frames target."""
    write_parquet: bool = False
    """Also write ``<name>.parquet`` per target: frame, pts, time_s, faces, boxes, scores."""
    parquet_images: bool = False
    """Also store each output frame as PNG bytes (``image_png``) in the Parquet file."""
    provenance: bool = True
    """Label each output video as synthetic (container ``comment`` / ``description`` tags)."""

    def __post_init__(self) -> None:
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "frames_fps", Fraction(self.frames_fps))
        if not self.source_image:
            raise InvalidOptionError("source_image: a path or URI is needed")
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise InvalidOptionError("targets: at least one video path, frames folder or URI is needed")
        if len(set(targets)) != len(targets):
            raise InvalidOptionError("targets: the same target is listed twice")
        if not self.output:
            raise InvalidOptionError("output: a folder or file path is needed")
        if is_file_output(self.output) and len(targets) > 1:
            raise InvalidOptionError(
                f"output {self.output} is a file name but there are {len(targets)} targets; give a folder"
            )
        if self.options.face_selector_mode == "reference" and not self.reference_image:
            raise InvalidOptionError("face_selector_mode 'reference' needs reference_image")
        for name, value in (("batch_size", self.batch_size), ("num_actors", self.num_actors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{name}: expected an integer >= 1, got {value!r}")
        if isinstance(self.intra_op_threads, bool) or self.intra_op_threads < 0:
            raise InvalidOptionError(
                f"intra_op_threads: expected an integer >= 0, got {self.intra_op_threads!r}"
            )
        if not math.isfinite(self.num_gpus) or self.num_gpus < 0:
            raise InvalidOptionError(f"num_gpus: expected a number >= 0, got {self.num_gpus!r}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise InvalidOptionError(f"num_gpus: fractions only below 1 (Ray's rule), got {self.num_gpus}")
        if not math.isfinite(self.cpus_per_actor) or self.cpus_per_actor <= 0:
            raise InvalidOptionError(f"cpus_per_actor: expected a number > 0, got {self.cpus_per_actor!r}")
        if not 0 <= self.crf <= 51:
            raise InvalidOptionError(f"crf: expected 0..51, got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise InvalidOptionError(
                f"preset: expected one of {', '.join(X264_PRESETS)}, got {self.preset!r}"
            )
        if self.frames_fps <= 0:
            raise InvalidOptionError(f"frames_fps: expected a positive rate, got {self.frames_fps}")
        if self.parquet_images and not self.write_parquet:
            raise InvalidOptionError("parquet_images needs write_parquet")

    @property
    def actor_resources(self) -> dict[str, float]:
        """``num_cpus`` / ``num_gpus`` of each swap actor."""
        if self.num_gpus > 0:
            return {"num_cpus": 0.0, "num_gpus": self.num_gpus}
        return {"num_cpus": self.cpus_per_actor, "num_gpus": 0.0}

    @property
    def actor_pipeline(self) -> PipelineConfig:
        """The models each swap actor builds: :attr:`pipeline` with the enhancer only when the options
        ask for it, and ONNX Runtime thread pools sized for an actor that shares its cores."""
        threads = self.intra_op_threads or (1 if self.num_gpus > 0 else math.ceil(self.cpus_per_actor))
        session: SessionConfig = replace(self.pipeline.session, intra_op_threads=threads, spin=False)
        return replace(self.pipeline, enhance=self.options.enhance, session=session)


@dataclass(frozen=True)
class TargetResult:
    """What the job wrote for one target."""

    target: str
    output: str
    parquet: str | None
    tracks: str
    """The sidecar of the faces swapped (``<name>.tracks.jsonl``)."""
    frames: int
    frames_without_face: int
    """Frames passed through unchanged because no (selected) face was found."""
    faces_swapped: int
    width: int
    height: int
    fps: Fraction
    detector_calls: int = 0
    """Frames the detector ran on (with tracking, the keyframes; without, every frame)."""


@dataclass(frozen=True)
class BatchJobResult:
    """All targets of a job, in the order given."""

    targets: tuple[TargetResult, ...]
    components: dict[str, str | None]
    """Profile and model names that ran (as in the provenance label)."""
    elapsed_s: float
    """The whole job: planning, starting the actors, loading the models, every frame."""
    startup_s: float = 0.0
    """Until the first frames were written (actors started, models loaded, the first batch swapped)."""

    @property
    def frames(self) -> int:
        return sum(t.frames for t in self.targets)

    @property
    def frames_without_face(self) -> int:
        return sum(t.frames_without_face for t in self.targets)

    @property
    def faces_swapped(self) -> int:
        return sum(t.faces_swapped for t in self.targets)

    @property
    def detector_calls(self) -> int:
        return sum(t.detector_calls for t in self.targets)

    @property
    def fps(self) -> float:
        """Frames per second over the whole job, start-up included."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def throughput_fps(self) -> float:
        """Frames per second once the first frames arrived (what a progress bar started then shows)."""
        running = self.elapsed_s - self.startup_s
        return self.frames / running if running > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "frames_without_face": self.frames_without_face,
            "faces_swapped": self.faces_swapped,
            "detector_calls": self.detector_calls,
            "elapsed_s": round(self.elapsed_s, 3),
            "startup_s": round(self.startup_s, 3),
            "fps": round(self.fps, 2),
            "throughput_fps": round(self.throughput_fps, 2),
            "components": dict(self.components),
            "targets": [
                {
                    "target": t.target,
                    "output": t.output,
                    "parquet": t.parquet,
                    "tracks": t.tracks,
                    "frames": t.frames,
                    "frames_without_face": t.frames_without_face,
                    "faces_swapped": t.faces_swapped,
                    "detector_calls_per_frame": round(t.detector_calls / t.frames, 4) if t.frames else 0.0,
                    "size": [t.width, t.height],
                    "fps": str(t.fps),
                }
                for t in self.targets
            ],
        }
