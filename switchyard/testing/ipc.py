"""Hypothesis strategies for the IPC socket protocol (:mod:`switchyard.protocols.ipc`).

* :func:`wire_values` - values a codec carries (``bytes`` only for msgpack).
* :func:`messages` - any valid :class:`~switchyard.protocols.ipc.Message`.
* :func:`chunked` - a byte string cut into arbitrary pieces, as a socket may deliver it.

and :func:`read_messages`, for tests that talk to a server over a raw stream.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio
from hypothesis import strategies as st

from switchyard.protocols.ipc import Kind, Message
from switchyard.protocols.ipc_framing import MessageReader

__all__ = ["chunked", "messages", "read_messages", "wire_values"]

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgpack can carry


def wire_values(codec: str = "json", max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Nested data that round-trips through ``codec`` (``"json"`` or ``"msgpack"``) unchanged."""
    scalars: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        st.integers(_INT_MIN, _INT_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
    ]
    if codec == "msgpack":
        scalars.append(st.binary(max_size=40))
    elif codec != "json":
        raise ValueError(f"unknown codec {codec!r}")
    return st.recursive(
        st.one_of(scalars),
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(st.text(max_size=12), inner, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def messages(codec: str = "json") -> st.SearchStrategy[Message]:
    """Any message the protocol allows, with ``data`` the codec can carry."""
    return st.builds(
        Message,
        kind=st.sampled_from(list(Kind)),
        id=st.text(max_size=24),
        method=st.text(max_size=24),
        data=wire_values(codec),
        timestamp=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    )


@st.composite
def chunked(draw: st.DrawFn, data: bytes, max_chunks: int = 40) -> list[bytes]:
    """``data`` cut at arbitrary points (empty pieces allowed); joining gives ``data`` back."""
    if not data:
        return [b""] * draw(st.integers(0, 2))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_chunks)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


async def read_messages(
    stream: trio.abc.ReceiveStream, reader: MessageReader, count: int, timeout: float = 10.0
) -> list[Message]:
    """The next ``count`` messages from ``stream`` (fewer if the peer closes first).

    ``reader`` keeps bytes beyond the last message for the next call. Raises
    ``trio.TooSlowError`` after ``timeout`` seconds, and whatever the reader raises
    for bytes that are not valid messages.
    """
    out: list[Message] = []
    with trio.fail_after(timeout):
        while len(out) < count:
            message = reader.next_message()
            if message is not None:
                out.append(message)
                continue
            data = await stream.receive_some(65536)
            if not data:
                break
            reader.receive_data(data)
    return out
