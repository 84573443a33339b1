"""Durable video jobs over HTTP, run on the application's model deployments.

- :mod:`~serve_app.jobs.records`: the job's records, who writes each, and the task as the API shows it.
- :mod:`~serve_app.jobs.store`: job folders and indexes on any ``pyarrow.fs`` filesystem.
- :mod:`~serve_app.jobs.uploads`: reading and checking a job request's uploads.
- :mod:`~serve_app.jobs.runner`: one attempt of one job (a detached Ray actor).
- :mod:`~serve_app.jobs.launcher`: runner actors by name, and the jobs leader's lease.
- :mod:`~serve_app.jobs.manager`: the leader's queue, watch, cancellation and retention.
- :mod:`~serve_app.jobs.service`: the HTTP routes, wired into the ingress.
"""

from serve_app.jobs.service import JobService

__all__ = ["JobService"]
