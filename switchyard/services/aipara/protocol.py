"""aipara wire messages: the Rime IME plugin's two ZeroMQ channels, sans-IO.

The peer is the aipara C++/Lua client inside the Rime input method (docs/aipara.md).
Its field names are the wire format and are kept exactly, misspellings included:
requests and replies are keyed by ``messege_type`` and a reply's command list is
``command_messege``.

This module is the one import point for the whole wire protocol; each part lives in
its own module and is re-exported here, so callers may import any name from either:

* **Rime state** (client REQ, 100 ms budget), :mod:`~switchyard.services.aipara.rime_messages`:
  :func:`parse_rime_request` turns one request body into a :class:`StateReport`,
  :class:`ClientCommand`, :class:`Pong` or, for anything malformed, a :class:`BadRequest`.
  It never raises, so the server can always answer exactly one reply:
  :func:`command_response` or :func:`error_response`, both in the ``command_response``
  shape the client parses.
* **AI convert/chat** (client DEALER, single-frame requests),
  :mod:`~switchyard.services.aipara.ai_messages`: :func:`parse_ai_request` gives a
  :class:`ConvertRequest`, :class:`ChatRequest` or :class:`AiBadRequest`; replies are
  built by :class:`ConvertProgress` (cumulative ``convert_result_stream`` messages),
  :func:`chat_chunk`, :func:`chat_error` and :func:`ai_error_reply`.
* **Field names and checks** shared by both, :mod:`~switchyard.services.aipara.wire`:
  :data:`MESSEGE_TYPE`, :data:`COMMAND_MESSEGE`, :data:`MAX_WIRE_INT`, :func:`json_type_name`.

Commands other actors queue for a client (``set_option``, ``set_property``,
``set_config``, ``clipboard_data``, ``paste_executed``, ``paste_failed``, ``ping``) are
the attrs classes of :mod:`switchyard.services.aipara.commands`;
:func:`command_to_wire` renders one for
``command_messege`` and :func:`command_from_dict` validates a plain mapping into one.

Nothing here does I/O; every function is deterministic given its arguments.
"""

from __future__ import annotations

from switchyard.services.aipara.ai_messages import (
    AI_KINDS as AI_KINDS,
)
from switchyard.services.aipara.ai_messages import (
    AiBadRequest,
    AiCandidate,
    AiRequest,
    ChatRequest,
    ConvertProgress,
    ConvertRequest,
    ai_error_reply,
    chat_chunk,
    chat_error,
    parse_ai_request,
    sniff_ai_kind,
)
from switchyard.services.aipara.commands import (
    COMMAND_KINDS,
    ClipboardData,
    CommandError,
    OutboxCommand,
    PasteExecuted,
    PasteFailed,
    Ping,
    SetConfig,
    SetOption,
    SetProperty,
    command_from_dict,
    command_to_wire,
)
from switchyard.services.aipara.rime_messages import (
    RIME_KINDS as RIME_KINDS,
)
from switchyard.services.aipara.rime_messages import (
    BadRequest,
    ClientCommand,
    Commit,
    Pong,
    RimeRequest,
    StateReport,
    SwitchOption,
    command_response,
    error_response,
    parse_rime_request,
    response_name,
)
from switchyard.services.aipara.wire import (
    COMMAND_MESSEGE,
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_WIRE_INT,
    MESSEGE_TYPE,
    json_type_name,
)

__all__ = [
    "COMMAND_KINDS",
    "COMMAND_MESSEGE",
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_WIRE_INT",
    "MESSEGE_TYPE",
    "AiBadRequest",
    "AiCandidate",
    "AiRequest",
    "BadRequest",
    "ChatRequest",
    "ClientCommand",
    "ClipboardData",
    "CommandError",
    "Commit",
    "ConvertProgress",
    "ConvertRequest",
    "OutboxCommand",
    "PasteExecuted",
    "PasteFailed",
    "Ping",
    "Pong",
    "RimeRequest",
    "SetConfig",
    "SetOption",
    "SetProperty",
    "StateReport",
    "SwitchOption",
    "ai_error_reply",
    "chat_chunk",
    "chat_error",
    "command_from_dict",
    "command_response",
    "command_to_wire",
    "error_response",
    "json_type_name",
    "parse_ai_request",
    "parse_rime_request",
    "response_name",
    "sniff_ai_kind",
]
