"""tensor: Tech Renaissance tensor sessions.

``TensorSessionServer`` is the Python side a C++ ``PythonSession`` drives through a
directory of JSON and TSR files; ``PythonSession`` is a Python client for the same
files; ``TensorSessionActor`` and ``TensorSessionClient`` carry the same commands
over ZeroMQ. The TSR codec is ``switchyard.services.tensor.tsr``. Names resolve lazily.
"""

from switchyard.runtime.lazy import lazy_exports

_EXPORTS = {
    "TensorSessionServer": ".server",
    "TechRenaissanceServer": ".server",
    "SessionError": ".server",
    "PythonSession": ".file_client",
    "TensorSessionActor": ".zmq_session",
    "TensorSessionConfig": ".zmq_session",
    "TensorSessionClient": ".client",
    "TSRError": ".tsr",
    "load_tsr": ".tsr_file",
    "save_tsr": ".tsr_file",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
