"""robot: the robot control backend.

Browsers (socket.io-client) reach ``SocketIOBridgeActor``; it forwards ``update``,
``start`` and ``process`` to ``RobotWorkerActor``, which installs the uploaded
project ZIP and runs its ``main.py`` in a separate worker process.
"""
