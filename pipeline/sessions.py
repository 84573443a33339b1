"""The one place that chooses ONNX Runtime execution providers and creates sessions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import onnxruntime as ort

from pipeline.errors import InvalidOptionError, ProviderError

log = logging.getLogger(__name__)

_PROVIDER_NAMES = MappingProxyType(
    {
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
        "cpu": "CPUExecutionProvider",
    }
)
PROVIDERS: tuple[str, ...] = tuple(_PROVIDER_NAMES)
"""Short provider names accepted in configs and on the command line."""


@dataclass(frozen=True)
class SessionConfig:
    """How to run ONNX models.

    ``providers``: short names in preference order (``cuda``, ``tensorrt``, ``cpu``).
    ``strict``: raise :class:`ProviderError` when the first provider asked for is not active after
    creation (ONNX Runtime otherwise falls back to CPU silently).
    ``gpu_mem_limit_mb``: per-session CUDA arena limit, 0 = unlimited.
    ``intra_op_threads``: threads one model call may use, 0 = one per core (ONNX Runtime's default).
    ``spin``: let idle intra-op threads spin-wait for work (ONNX Runtime's default). Spinning lowers the
    latency of back-to-back calls in a process that owns its cores, and burns CPU that other processes
    need where several replicas share cores: services turn it off.
    """

    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0
    spin: bool = True
    gpu_mem_limit_mb: int = 0
    device_id: int = 0
    strict: bool = False

    def __post_init__(self) -> None:
        if not self.providers:
            raise InvalidOptionError("providers: at least one provider is needed")
        for p in self.providers:
            if p not in _PROVIDER_NAMES:
                raise InvalidOptionError(
                    f"providers: unknown provider {p!r}, expected one of {sorted(_PROVIDER_NAMES)}"
                )
        if self.intra_op_threads < 0 or self.gpu_mem_limit_mb < 0 or self.device_id < 0:
            raise InvalidOptionError("intra_op_threads, gpu_mem_limit_mb and device_id must be >= 0")

    @classmethod
    def auto(cls, **kwargs: object) -> SessionConfig:
        """CUDA first when this onnxruntime build has it, else CPU."""
        have_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        return cls(providers=("cuda", "cpu") if have_cuda else ("cpu",), **kwargs)  # type: ignore[arg-type]

    def ort_providers(self) -> list[str | tuple[str, dict[str, object]]]:
        out: list[str | tuple[str, dict[str, object]]] = []
        for p in self.providers:
            name = _PROVIDER_NAMES[p]
            if name == "CUDAExecutionProvider":
                opts: dict[str, object] = {"device_id": self.device_id}
                if self.gpu_mem_limit_mb:
                    opts["gpu_mem_limit"] = self.gpu_mem_limit_mb * 1024 * 1024
                out.append((name, opts))
            else:
                out.append(name)
        return out


def create_session(model: Path | str | bytes, config: SessionConfig) -> ort.InferenceSession:
    """Create an InferenceSession from a path or serialized model bytes and log the active providers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    available = set(ort.get_available_providers())
    wanted = config.ort_providers()
    usable = [p for p in wanted if (p if isinstance(p, str) else p[0]) in available]
    first = _PROVIDER_NAMES[config.providers[0]]
    if config.strict and first not in available:
        raise ProviderError(f"{first} was required but this onnxruntime build only has {sorted(available)}")
    if not usable:
        usable = ["CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, sess_options=options, providers=usable)
    active = session.get_providers()
    label = "<bytes>" if isinstance(model, bytes) else Path(model).name
    log.info(
        "onnx session %s: providers asked %s, active %s, intra-op threads %s, spinning %s",
        label,
        [p if isinstance(p, str) else p[0] for p in wanted],
        active,
        config.intra_op_threads or "per core",
        config.spin,
    )
    if config.strict and active[0] != first:
        raise ProviderError(f"{first} was required for {label} but the session runs on {active}")
    return session
