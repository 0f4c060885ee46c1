"""Transports: bridges between sockets (ZeroMQ, Unix/TCP, WebSocket, files) and mailboxes."""
