"""Typed, strict arguments of the Serve application (``serve_app.app:build_app``).

Every model here forbids unknown keys, so a typo in ``configs/serve*.yaml`` fails the deploy instead of
being silently ignored. Only plain data lives here: the models are built on the replicas (where the GPU
is), from :meth:`AppArgs.pipeline_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import InvalidOptionError
from pipeline.options import MAX_FACES_CAP
from pipeline.orchestration import DEFAULT_MAX_FACES
from pipeline.profiles import PipelineConfig
from pipeline.sessions import SessionConfig
from pipeline.video import X264_PRESETS
from serve_app.forms import UploadPace

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Default limit of one swap request body (all uploads together), checked while it is read."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Default decoded pixel-count limit per image (decompression bombs)."""
DEFAULT_JOB_STORE = "/tmp/faceswap-jobs"
"""Default video job store: a local directory, for one node (a cluster needs ``s3://`` or a shared path)."""
MIN_API_KEY_LENGTH = 16
"""Shortest accepted API key (inline or in the keys file): printable ASCII without whitespace."""


def check_api_key(key: str) -> str:
    """``key`` when it is a usable API key; the ValueError never repeats the key."""
    if len(key) < MIN_API_KEY_LENGTH:
        raise ValueError(f"an API key must be at least {MIN_API_KEY_LENGTH} characters long")
    if not all("!" <= ch <= "~" for ch in key):
        raise ValueError("an API key must be printable ASCII without whitespace")
    return key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchArgs(_Strict):
    """``@serve.batch`` knobs; sent as the deployment's ``user_config`` so they change without a restart."""

    max_batch_size: int = Field(default=8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0.0, le=10.0)


class AutoscalingArgs(_Strict):
    """The subset of Ray Serve's ``autoscaling_config`` this service exposes."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    look_back_period_s: float = Field(default=30.0, gt=0)
    metrics_interval_s: float | None = Field(default=None, gt=0)
    """How often handles and replicas push load metrics (Ray's default 10 s). Deprecated by Ray 2.60 in
    favour of environment variables that it does not read yet, so it is still the knob for fast reaction."""

    @model_validator(mode="after")
    def _replica_bounds(self) -> AutoscalingArgs:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        if (
            self.initial_replicas is not None
            and not self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie in [min_replicas, max_replicas]")
        if self.metrics_interval_s is not None and self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError("look_back_period_s must be greater than metrics_interval_s")
        return self


class ScalingArgs(_Strict):
    """Placement and admission of one deployment: a fixed ``num_replicas`` or an ``autoscaling`` range."""

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling: AutoscalingArgs | None = None
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    max_ongoing_requests: int = Field(default=16, ge=1)
    max_queued_requests: int = Field(default=64, ge=-1)
    """Requests a caller's handle may queue for this deployment before it is answered with 503; -1 = no
    limit."""
    health_check_period_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> ScalingArgs:
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set num_replicas or autoscaling, not both")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError("num_gpus above 1 must be a whole number")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas or 1
        return options


class ModelDeploymentArgs(ScalingArgs):
    """A model deployment (detector, swapper, enhancer): scaling plus its batch knobs."""

    batch: BatchArgs = BatchArgs()

    def deployment_options(self) -> dict[str, Any]:
        return {**super().deployment_options(), "user_config": self.batch.model_dump()}


class IngressArgs(ScalingArgs):
    """The HTTP ingress: scaling plus upload limits and its own admission limit."""

    num_cpus: float = Field(default=0.1, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1024)
    """Limit of one request body (all uploads together), enforced while the multipart stream is read."""
    upload_idle_timeout_s: float = Field(default=10.0, gt=0)
    """A request body that stops arriving for this long is answered 408."""
    upload_min_bytes_per_s: float = Field(default=32 * 1024, ge=0)
    """A request body arriving slower than this on average (after ``upload_grace_s``) is answered 408."""
    upload_grace_s: float = Field(default=5.0, ge=0)
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)
    """Decoded pixel-count limit per image."""
    max_inflight_swaps: int = Field(default=32, ge=1)
    """Swaps one ingress replica runs at once; more are answered 503 at once (the ingress' own queue)."""
    identity_cache_size: int = Field(default=256, ge=0)
    """Source identities each ingress replica keeps (by the sha256 of the source upload), so a source sent
    again is not decoded, detected and embedded again; 0 = keep none."""
    max_faces: int = Field(default=DEFAULT_MAX_FACES, ge=1, le=MAX_FACES_CAP)
    """Faces processed per image unless a request's ``max_faces`` says otherwise (never above the cap)."""
    jpeg_quality: int = Field(default=92, ge=1, le=100)
    provenance: bool = True
    """Label every output image as synthetic (XMP DigitalSourceType + JSON label, see README)."""
    readiness_timeout_s: float = Field(default=5.0, gt=0)

    def upload_pace(self) -> UploadPace:
        """How slowly a request body may arrive (``serve_app.forms.UploadPace``)."""
        return UploadPace(self.upload_idle_timeout_s, self.upload_min_bytes_per_s, self.upload_grace_s)


class AuthArgs(_Strict):
    """API keys on every ``/api/`` route: off when neither ``api_keys`` nor ``api_keys_file`` is set.

    ``api_keys_file`` (read by each ingress replica when it starts) holds one key per line; blank lines and
    ``#`` comments are skipped, and a key may be followed by a comment (``KEY  # team-a``). Keys given
    inline end up in the Serve config that the dashboard shows: prefer the file (e.g. a mounted secret).
    """

    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: str | None = None
    rate_limit_per_minute: float | None = Field(default=None, gt=0)
    """Sustained requests per minute allowed to each key (a token bucket per key and ingress replica);
    None = no limit."""
    rate_limit_burst: int = Field(default=10, ge=1)
    """Requests a key may make at once after being idle (the bucket's size)."""

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            check_api_key(key.get_secret_value())
        if len({key.get_secret_value() for key in keys}) != len(keys):
            raise ValueError("api_keys holds the same key twice")
        return keys

    @model_validator(mode="after")
    def _limit_needs_keys(self) -> AuthArgs:
        if self.rate_limit_per_minute is not None and not self.enabled:
            raise ValueError("rate_limit_per_minute is per API key: set api_keys or api_keys_file")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None


class JobsArgs(_Strict):
    """Video jobs (``POST /api/v1/jobs``, see ``serve_app.jobs``): where their records and files live,
    upload and content limits, the queue, retention, how runners are watched, and how a runner feeds the
    model deployments."""

    store_uri: str = DEFAULT_JOB_STORE
    """Where job records and files live. A plain path is a directory on one node's disk: only for a
    single-node cluster with one ingress replica (the config refuses more). Otherwise a ``pyarrow.fs`` URI
    every node reaches: ``s3://bucket/prefix?region=...``, or ``file:///path`` for a filesystem mounted at
    the same path on every node."""
    max_upload_bytes: int = Field(default=500 * 1024 * 1024, ge=1024)
    """Limit of one job request body (video and images), enforced while the body streams in. Each image
    is also held to ``ingress.max_upload_bytes`` and ``ingress.max_pixels``."""
    max_duration_s: float = Field(default=600.0, gt=0)
    """Longest target video: checked on the container's claim at submission, and on the decoded frames
    (count / frame rate, timestamps) while the job runs."""
    max_frame_pixels: int | None = Field(default=None, ge=1)
    """Pixels per video frame, checked like ``max_duration_s``; None: ``ingress.max_pixels``."""
    max_running_jobs: int = Field(default=4, ge=1)
    """Jobs running at once in the cluster; more wait in the queue (first come, first served)."""
    max_running_jobs_per_key: int = Field(default=2, ge=1)
    """Jobs of one API key running at once (without auth every job counts against one anonymous key)."""
    max_pending_jobs_per_key: int = Field(default=16, ge=1)
    """Queued and running jobs of one API key; a submission over it is answered 429 ``too_many_jobs``."""
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """A finished job and its files are deleted this long after it finished."""
    sweep_interval_s: float = Field(default=3600.0, gt=0)
    """How often the jobs leader looks for job folders that no index names (left by a crash) and deletes
    them; it also does when it becomes the leader."""
    max_attempts: int = Field(default=2, ge=1, le=99)
    """Runner starts per job: a job whose runner is lost is started again until this many, then failed."""
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    """How often a runner writes its heartbeat into its attempt report."""
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    """A running job whose heartbeat is older than this has lost its runner."""
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    """How often the jobs leader (one ingress replica) starts queued jobs and checks running ones."""
    progress_interval_s: float = Field(default=1.0, ge=0)
    """Least time between two progress writes of a runner."""
    max_runtime_s: float = Field(default=3600.0, gt=0)
    """A job running longer than this is stopped and failed."""
    runner_cpus: float = Field(default=1.0, ge=0)
    """CPUs a job's runner reserves: it decodes, warps, pastes back and encodes; the models run in the
    model deployments."""
    frames_per_batch: int = Field(default=8, ge=1, le=256)
    """Frames a runner sends through the orchestration at once (one call per model stage)."""
    batches_in_flight: int = Field(default=2, ge=1, le=32)
    """Batches a runner keeps in flight, so the model deployments batch its calls with other traffic."""
    unavailable_timeout_s: float = Field(default=120.0, ge=0)
    """How long a runner waits for unavailable or overloaded model deployments (e.g. the application being
    redeployed) before the job fails."""
    crf: int = Field(default=18, ge=0, le=51)
    """H.264 quality of the output video (lower is better)."""
    preset: str = "medium"
    """x264 preset of the output video."""

    @model_validator(mode="after")
    def _consistent(self) -> JobsArgs:
        if self.preset not in X264_PRESETS:
            raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}")
        if 2 * self.heartbeat_interval_s > self.heartbeat_timeout_s:
            raise ValueError("heartbeat_timeout_s must be at least twice heartbeat_interval_s")
        if self.max_running_jobs_per_key > self.max_running_jobs:
            raise ValueError("max_running_jobs_per_key must be <= max_running_jobs")
        if self.max_pending_jobs_per_key < self.max_running_jobs_per_key:
            raise ValueError("max_pending_jobs_per_key must be >= max_running_jobs_per_key")
        return self

    @staticmethod
    def is_node_local(store_uri: str) -> bool:
        """Whether a job store URI is a plain path: a directory on one node's disk. A ``file://`` URI names
        a filesystem mounted at the same path on every node (NFS, a shared volume); others are object
        stores."""
        return "://" not in store_uri

    @property
    def node_local_store(self) -> bool:
        return self.is_node_local(self.store_uri)


class IdentitiesArgs(_Strict):
    """Kept source identities (``POST /api/v1/identities``, see ``serve_app.identities``)."""

    store_uri: str = "/tmp/faceswap-identities"
    """Where identities live, as ``jobs.store_uri``: a plain path is one node's directory (only for one
    ingress replica: the config refuses more); otherwise a ``pyarrow.fs`` URI every node reaches."""
    ttl_s: float = Field(default=3600.0, ge=1)
    """How long an identity is kept unless its request asks for less (``ttl_s``)."""
    max_ttl_s: float = Field(default=86400.0, ge=1)
    max_per_key: int = Field(default=1000, ge=1)
    """Identities one API key may hold at once."""
    cache_size: int = Field(default=64, ge=0)
    """Identities each ingress replica keeps loaded."""
    revalidate_s: float = Field(default=10.0, ge=0)
    """A loaded identity is checked against the store again after this long (a DELETE elsewhere shows)."""
    sweep_interval_s: float = Field(default=300.0, gt=0)
    """Least time between two sweeps of expired identities (run after a create)."""

    @model_validator(mode="after")
    def _ttl_bounds(self) -> IdentitiesArgs:
        if self.ttl_s > self.max_ttl_s:
            raise ValueError("ttl_s must be <= max_ttl_s")
        return self


class LiveArgs(_Strict):
    """Live swapping over a WebSocket (``WS /api/v1/live``, see ``serve_app.live``). Limits are per ingress
    replica (as the API keys' rate limits)."""

    max_sessions: int = Field(default=16, ge=0)
    """Live connections one ingress replica serves at once; 0 turns live swapping off."""
    max_sessions_per_key: int = Field(default=4, ge=1)
    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest frame message (JPEG or WebP)."""
    max_frame_pixels: int = Field(default=1920 * 1080, ge=64 * 64)
    max_fps: float = Field(default=30.0, gt=0, le=240)
    """Frames a connection may send per second; faster ones are dropped (and reported)."""
    idle_timeout_s: float = Field(default=15.0, gt=0)
    """A connection that sends nothing for this long (the setup message included) is closed."""
    ticket_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    """Lifetime of a connection ticket (``POST /api/v1/live/tickets``)."""
    jpeg_quality: int = Field(default=80, ge=1, le=100)
    pipeline_depth: int = Field(default=1, ge=1, le=8)
    """Frames of one connection in flight at once. 1: one frame at a time, the least latency. 2: the next
    frame is decoded and tracked while one is swapped: more frames per second for one connection where
    cores are free, about twice the latency. Frames leave in order either way."""
    detect_every: int = Field(default=4, ge=1, le=100)
    """Keyframe interval of the tracker: the detector runs every this many frames (or sooner when
    following a face fails)."""
    max_gap: int = Field(default=5, ge=0, le=100)
    """Frames a missed face is coasted on its motion."""
    smoothing: float = Field(default=0.5, ge=0, le=1)
    """One-Euro smoothing strength of the tracked landmarks (0 = raw)."""
    mesh_crop_size: int | None = Field(default=256, ge=64, le=1024)
    """With the classical mesh swapper: the crop side of live frames, swapped in the ingress replica (a
    classical CPU model: no GPU to share, no batching to gain, and the crops need no Ray hop). None: live
    frames go to the FaceSwapper deployment at its own crop side, as images do."""


class AppArgs(_Strict):
    """Arguments of ``build_app``: which models run (profile, directories, overrides, providers) and how
    each deployment is placed and scaled."""

    profile: Literal["auto", "lite", "full"] = "auto"
    models_dir: str | None = None
    extra_search_dirs: list[str] = Field(default_factory=list)
    use_shared_assets: bool = False
    """Also search the project's shared test assets (tests and the demo only)."""
    download: bool = False
    overrides: dict[Literal["detector", "embedder", "swapper", "enhancer"], str] = Field(default_factory=dict)
    """Stage -> catalogue name or ``.onnx`` path."""
    providers: list[Literal["cuda", "tensorrt", "cpu"]] | None = None
    """ONNX Runtime providers in preference order; None = CUDA when the replica's onnxruntime has it."""
    strict_providers: bool = False
    intra_op_threads: int = Field(default=0, ge=0)
    """Threads one ONNX Runtime call may use in a model replica; 0 = one per core."""
    spin: bool = False
    """Let idle ONNX Runtime threads spin-wait. Off by default: replicas share cores, and a spinning
    replica takes CPU from the others (and from the ingress) while it waits."""
    gpu_mem_limit_mb: int = Field(default=0, ge=0)
    enhance: bool = True
    """Deploy the enhancer at all; without it ``enhance_output`` requests are answered 422."""
    auth: AuthArgs = AuthArgs()
    ingress: IngressArgs = IngressArgs()
    jobs: JobsArgs = JobsArgs()
    identities: IdentitiesArgs = IdentitiesArgs()
    live: LiveArgs = LiveArgs()
    detector: ModelDeploymentArgs = ModelDeploymentArgs()
    embedder: ModelDeploymentArgs = ModelDeploymentArgs()
    swapper: ModelDeploymentArgs = ModelDeploymentArgs(max_ongoing_requests=32)
    enhancer: ModelDeploymentArgs = ModelDeploymentArgs()
    landmarker: ModelDeploymentArgs = ModelDeploymentArgs()
    """The face mesh (shipped with the package): region masks and refined alignment."""

    @model_validator(mode="after")
    def _stores_are_shared(self) -> AppArgs:
        ingress = self.ingress
        replicas = ingress.autoscaling.max_replicas if ingress.autoscaling else (ingress.num_replicas or 1)
        for section, uri, what in (
            ("jobs", self.jobs.store_uri, "job"),
            ("identities", self.identities.store_uri, "identity"),
        ):
            if JobsArgs.is_node_local(uri) and replicas > 1:
                raise ValueError(
                    f"{section}.store_uri {uri!r} is a directory on one node, but the ingress may run "
                    f"{replicas} replicas that must all see every {what}: use shared storage "
                    "(s3://bucket/prefix, or file:///path on a filesystem mounted on every node)"
                )
        return self

    @classmethod
    def parse(cls, args: AppArgs | dict[str, Any] | None) -> AppArgs:
        """Validate ``args``; any problem (unknown key, wrong type, bad range) is an InvalidOptionError."""
        if isinstance(args, AppArgs):
            return args
        try:
            return cls.model_validate(args or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<args>'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidOptionError(f"invalid application args: {problems}") from None

    @property
    def profile_label(self) -> str:
        """The profile as responses report it (``custom`` when a stage is overridden)."""
        return self.pipeline_config().profile_label

    def deployed(self) -> dict[str, ScalingArgs]:
        """The deployments this graph deploys, by their args section: the one list that the app builder,
        the RayService generator and the cluster sizing read."""
        deployments: dict[str, ScalingArgs] = {
            "ingress": self.ingress,
            "detector": self.detector,
            "swapper": self.swapper,
        }
        if self.has_embedder:
            deployments["embedder"] = self.embedder
        if self.enhance:
            deployments["enhancer"] = self.enhancer
        deployments["landmarker"] = self.landmarker
        return deployments

    @property
    def has_embedder(self) -> bool:
        """Whether the graph deploys an embedder: every profile but ``lite`` may have one (``auto`` looks for
        it on the replica, see ``serve_app.deployments.FaceEmbedder``)."""
        return self.profile != "lite" or "embedder" in self.overrides

    def session_config(self) -> SessionConfig:
        """Evaluate on the replica: ``providers=None`` looks at that process' onnxruntime build."""
        kwargs: dict[str, Any] = {
            "intra_op_threads": self.intra_op_threads,
            "spin": self.spin,
            "gpu_mem_limit_mb": self.gpu_mem_limit_mb,
            "strict": self.strict_providers,
        }
        if self.providers is None:
            return SessionConfig.auto(**kwargs)
        return SessionConfig(providers=tuple(self.providers), **kwargs)

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            profile=self.profile,
            models_dir=Path(self.models_dir) if self.models_dir else None,
            extra_search_dirs=tuple(Path(p) for p in self.extra_search_dirs),
            use_shared_assets=self.use_shared_assets,
            download=self.download,
            session=self.session_config(),
            overrides={str(stage): value for stage, value in self.overrides.items()},
            enhance=self.enhance,
        )
