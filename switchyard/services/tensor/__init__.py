"""tensor: Tech Renaissance tensor sessions.

``TensorSessionServer`` is the Python side a C++ ``PythonSession`` drives through a
directory of JSON and TSR files; ``PythonSession`` is a Python client for the same
files; ``TensorSessionActor`` and ``TensorSessionClient`` carry the same commands
over ZeroMQ. The TSR codec is ``switchyard.services.tensor.tsr``.
"""
