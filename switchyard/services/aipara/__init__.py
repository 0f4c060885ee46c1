"""aipara: the Rime input-method assistant's two ZeroMQ services.

``RimeStateActor`` answers the Rime client's REQ socket (tcp 10086) and keeps each
client's state and command outbox; ``AiStreamActor`` streams convert and chat
answers to its DEALER socket (tcp 10087). Names resolve lazily.
"""

from switchyard.runtime.lazy import lazy_exports

_EXPORTS = {
    "RimeStateActor": ".rime_state",
    "RimeStateConfig": ".rime_state",
    "QueueCommand": ".rime_state",
    "GetClient": ".rime_state",
    "ListClients": ".rime_state",
    "Subscribe": ".rime_state",
    "Unsubscribe": ".rime_state",
    "subscribe_events": ".rime_state",
    "RimeStateBook": ".rime_book",
    "AiStreamActor": ".ai_stream",
    "AiStreamConfig": ".ai_stream",
    "AiBackend": ".backends.base",
    "BackendError": ".backends.base",
    "LocalBackend": ".backends.local",
    "OpenAIBackend": ".backends.openai",
    "SetOption": ".protocol",
    "SetProperty": ".protocol",
    "SetConfig": ".protocol",
    "ClipboardData": ".protocol",
    "PasteExecuted": ".protocol",
    "PasteFailed": ".protocol",
    "Ping": ".protocol",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
