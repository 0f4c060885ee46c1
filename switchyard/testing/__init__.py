"""Helpers for testing switchyard actors and the peers they talk to.

* :func:`run_system` / :func:`run_manifest`: run a system (or a manifest) for the
  length of a test; ``switchyard.testing.fixtures.actor_system`` is the same as a
  pytest-trio fixture.
* Loopback endpoints that do not collide: :func:`free_tcp_endpoint`,
  :func:`ipc_endpoint`.
* Hypothesis strategies, one module per protocol: ``switchyard.testing.codec``
  (JSON/msgpack bodies) and the protocol modules next to it.
"""

from switchyard.testing.ports import free_tcp_endpoint, free_tcp_port, ipc_endpoint
from switchyard.testing.system import run_manifest, run_system

__all__ = ["free_tcp_endpoint", "free_tcp_port", "ipc_endpoint", "run_manifest", "run_system"]
