"""Concrete actors, one module per concern.

``KINDS`` maps each short kind name used in manifests to ``"module:Class"``; the
runtime imports a module only when its kind is used.
"""

KINDS: dict[str, str] = {
    "echo": "switchyard.actors.echo:EchoActor",
}
