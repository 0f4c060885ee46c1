"""Helpers for testing switchyard actors and the peers they talk to.

``run_system`` runs an actor system for the length of a test; the ``strategies``
modules hold Hypothesis strategies for each wire protocol.
"""

from switchyard.testing.ports import free_tcp_endpoint, free_tcp_port, ipc_endpoint

__all__ = ["free_tcp_endpoint", "free_tcp_port", "ipc_endpoint"]
