"""How the jobs code reaches Ray: runner actors by name, and the lease that makes one ingress replica the
jobs leader. Both are Protocols so the leader's logic runs in tests without Ray (fake launcher and lease).

- :class:`RayRunners`: each attempt of a job is a named, detached :class:`~serve_app.jobs.runner.JobRunner`
  actor (``faceswap-job-<task id>-<attempt>`` in the ``faceswap-jobs`` namespace). Creating the actor
  under its name is the claim on the attempt. With a store on one node's disk, runners are pinned there.
- :class:`RayLease`: the leader holds a small named actor (``faceswap-jobs-leader-<digest>``) that it
  owns, so the actor, and with it the name, goes when the leader's replica goes; another replica then
  creates it and leads. One leader per job store and application in the cluster.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from serve_app.config import AppArgs
from serve_app.jobs.runner import JobRunner

log = logging.getLogger(__name__)

RUNNER_NAMESPACE = "faceswap-jobs"
"""Ray namespace of the runner actors and of the leader's lease."""
LEASE_CHECK_TIMEOUT_S = 10.0


class RunnerLauncher(Protocol):
    """Creates, finds and stops runners by name."""

    def claim(self, name: str) -> object | None:
        """Create the runner ``name`` (not started yet); None when a runner of that name exists."""

    def start(self, runner: object, task_id: str, attempt: int) -> None:
        """Start a claimed runner on its attempt (returns at once)."""

    def alive(self, name: str) -> bool:
        """Whether a runner of that name exists (starting or running)."""

    def stop(self, name: str) -> None:
        """Kill the runner ``name`` if it exists."""


class Lease(Protocol):
    """Leadership of the jobs: at most one holder at a time."""

    def hold(self) -> bool:
        """Take the lease if it is free, or confirm this process still holds it."""

    def release(self) -> None:
        """Give the lease up (when the replica stops)."""


class RayRunners:
    """Runners as named, detached :class:`JobRunner` actors reserving ``jobs.runner_cpus``, working for the
    application ``app_name``; placed on ``node_id`` when given (the node whose disk holds the store)."""

    def __init__(self, store_uri: str, args: AppArgs, app_name: str, node_id: str | None = None) -> None:
        self._store_uri = store_uri
        self._args = args
        self._app_name = app_name
        self._node_id = node_id
        self._actor_class = ray.remote(JobRunner)

    def claim(self, name: str) -> object | None:
        options: dict[str, Any] = {
            "name": name,
            "namespace": RUNNER_NAMESPACE,
            "lifetime": "detached",
            "num_cpus": self._args.jobs.runner_cpus,
            "max_restarts": 0,
        }
        if self._node_id is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._node_id, soft=False)
        try:
            return self._actor_class.options(**options).remote(self._store_uri, self._args, self._app_name)
        except ValueError:  # the name is taken
            return None

    def start(self, runner: object, task_id: str, attempt: int) -> None:
        runner.run.remote(task_id, attempt)  # type: ignore[attr-defined]

    def alive(self, name: str) -> bool:
        try:
            ray.get_actor(name, namespace=RUNNER_NAMESPACE)
        except ValueError:
            return False
        return True

    def stop(self, name: str) -> None:
        try:
            actor = ray.get_actor(name, namespace=RUNNER_NAMESPACE)
        except ValueError:
            return
        ray.kill(actor, no_restart=True)


class _LeaseHolder:
    """The actor whose name is the lease; it lives as long as the replica that created it."""

    def held(self) -> bool:
        return True


def lease_name(store_uri: str, app_name: str) -> str:
    """The lease of application ``app_name``'s jobs in ``store_uri``: one leader per store and application."""
    digest = hashlib.sha256(f"{store_uri}\n{app_name}".encode()).hexdigest()[:16]
    return f"faceswap-jobs-leader-{digest}"


class RayLease:
    """The jobs leadership as a named actor owned by this process (not detached: it dies with us)."""

    def __init__(self, store_uri: str, app_name: str) -> None:
        self._name = lease_name(store_uri, app_name)
        self._holder: Any = None
        self._holder_class = ray.remote(_LeaseHolder)

    def hold(self) -> bool:
        if self._holder is not None:
            try:
                return bool(ray.get(self._holder.held.remote(), timeout=LEASE_CHECK_TIMEOUT_S))
            except Exception as exc:  # the holder died (or hangs): lead no more, try to take it again
                log.warning("jobs lease %s lost (%s)", self._name, type(exc).__name__)
                self.release()
        try:
            ray.get_actor(self._name, namespace=RUNNER_NAMESPACE)
            return False  # another replica leads
        except ValueError:
            pass
        try:
            self._holder = self._holder_class.options(
                name=self._name, namespace=RUNNER_NAMESPACE, num_cpus=0, max_restarts=0
            ).remote()
        except ValueError:  # another replica took it first
            return False
        log.info("this replica now leads the video jobs (%s)", self._name)
        return True

    def release(self) -> None:
        if self._holder is not None:
            holder, self._holder = self._holder, None
            ray.kill(holder, no_restart=True)
