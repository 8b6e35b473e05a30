"""What a worker loop is handed to stage context files: the node cache's place
and the copy channel's keys and limits (made by the endpoint, passed inside
the loop's Parsl task as the worker link's keys are)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilesSetup:
    server_public: bytes  # one CurveZMQ pair for every loop's file server
    server_secret: bytes
    client_public: bytes  # one pair for every loop's fetchers: the only key file servers admit
    client_secret: bytes
    node_cache: str | None = None  # None: $FAAS_NODE_CACHE, else the node's temp folder
    per_worker: bool = False  # tests and benchmarks: each worker process its own cache
    peer_copy: bool = True
    max_serving: int = 2
    serve_bandwidth: int | None = None  # bytes/s served in all
