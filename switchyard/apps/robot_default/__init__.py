"""Data, not code to import: the default robot project (``main.py``, ``README.txt``).

The robot worker copies this folder (without this file) to
``<storage_root>/projects/default/`` the first time it starts.
"""
