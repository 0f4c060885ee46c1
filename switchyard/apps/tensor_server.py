#!/usr/bin/env python3
"""Tech Renaissance PythonSession server, served by switchyard.

A drop-in for ``python/module/python_server.py``: the C++ client launches
``python3 <this script> <session_id>``. Point ``PythonSession`` at this file, or copy
it to ``<project>/python/module/python_server.py`` (it then finds
``<project>/workspace/python_session`` the way the original does). Otherwise set
``SWITCHYARD_SESSION_ROOT`` to the C++ side's ``WORKSPACE_PATH/python_session`` or
pass ``--root``. Same as the ``switchyard-tensor-session`` command; ``--help`` lists
the options (``--server module:Class`` runs your own TensorSessionServer subclass).
"""

import sys
from pathlib import Path

try:
    from switchyard.services.tensor.cli import main
except ImportError:  # a source checkout that is not installed: use the tree this file is in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from switchyard.services.tensor.cli import main

if __name__ == "__main__":
    sys.exit(main())
