"""Where the ingress replicas keep what they share (job files, identities): the check that a store on one
node's disk is only used on a one-node cluster (the config checks the replica count; the nodes are only
known on the cluster)."""

from __future__ import annotations

import ray

from pipeline.errors import InvalidOptionError
from serve_app.config import JobsArgs


def check_one_node(section: str, store_uri: str) -> None:
    """A store on one node's disk (``<section>.store_uri`` a plain path) needs a one-node cluster:
    InvalidOptionError otherwise."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if JobsArgs.is_node_local(store_uri) and len(nodes) > 1:
        raise InvalidOptionError(
            f"{section}.store_uri {store_uri!r} is a directory on one node, but this Ray cluster has "
            f"{len(nodes)} nodes: use shared storage (s3://bucket/prefix, or file:///path on a filesystem "
            "every node mounts)"
        )
