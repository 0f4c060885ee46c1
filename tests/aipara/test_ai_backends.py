"""AI backends: the offline pinyin engine, the local backend, the OpenAI-compatible
backend against a local SSE server, and the sans-IO SSE/completion pieces."""

from __future__ import annotations

import time

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from switchyard.services.aipara.backends.base import BackendError
from switchyard.services.aipara.backends.decoder import ConversionInterrupted
from switchyard.services.aipara.backends.local import LocalBackendConfig, open_local_backend
from switchyard.services.aipara.backends.openai import OpenAIBackendConfig, open_openai_backend
from switchyard.services.aipara.openai_protocol import (
    CandidateLines,
    CompletionError,
    SSEDecoder,
    SSEError,
    SSEEvent,
    check_template,
    clean_candidate,
    encode_request,
    error_message,
    parse_completion_event,
    parse_whole_completion,
)
from switchyard.services.aipara.protocol import AiCandidate, ChatRequest, ConvertRequest
from switchyard.testing import free_tcp_port
from switchyard.testing.aipara import FakeReply, serve_fake_completions


class Collect:
    def __init__(self) -> None:
        self.words: list[str] = []
        self.sentences: list[AiCandidate] = []
        self.ranked: list[AiCandidate] = []
        self.calls = 0

    async def cloud(self, words):
        self.calls += 1
        self.words.extend(words)

    async def ai(self, candidates, *, ranked=False):
        self.calls += 1
        if ranked:  # the best order so far: replaces what came before
            self.ranked = list(candidates)
        else:
            self.sentences.extend(candidates)


# -- the local backend (the decoder itself: tests/aipara/test_decoder.py) --------------


async def test_local_backend_convert_streams_words_then_sentences():
    async with open_local_backend() as backend:
        sink = Collect()
        await backend.convert(ConvertRequest("nihaoshijie"), sink)
    assert sink.calls == 2
    assert sink.words[0] == "你好"
    assert sink.ranked[0] == AiCandidate("你好世界", "switchyard")
    assert {c.comment_name for c in sink.ranked} == {"switchyard"}
    texts = [c.value for c in sink.ranked]
    assert len(texts) == len(set(texts)) >= 3


async def test_local_backend_respects_the_label_and_limits():
    config = LocalBackendConfig(max_sentences=3, max_words=2, engine_label="offline")
    async with open_local_backend(config) as backend:
        sink = Collect()
        await backend.convert(ConvertRequest("woaini"), sink)
    assert [c.value for c in sink.ranked][:1] == ["我爱你"]
    assert len(sink.ranked) <= 3 and len(sink.words) <= 2
    assert {c.comment_name for c in sink.ranked} == {"offline"}


def test_deprecated_hmm_keys_are_accepted_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        LocalBackendConfig(hmm=False)
    assert "deprecated" in caplog.text
    with pytest.raises(ValueError):
        LocalBackendConfig(beam=0)


async def test_local_backend_limits_and_chat():
    async with open_local_backend(LocalBackendConfig(max_input_letters=5)) as backend:
        with pytest.raises(BackendError, match="too long"):
            await backend.convert(ConvertRequest("nihaoshijie"), Collect())
        sink = Collect()
        await backend.convert(ConvertRequest("   "), sink)
        assert sink.calls == 0
        with pytest.raises(BackendError, match="no chat model configured"):
            await backend.chat(ChatRequest("你好"), lambda text: trio.lowlevel.checkpoint())


async def test_local_backend_cancellation_is_prompt_and_frees_the_thread(monkeypatch):
    """A cancelled convert returns at once; the worker notices its stop flag and leaves."""
    async with open_local_backend(LocalBackendConfig(threads=1)) as backend:
        stopped = []

        def slow_pass(text, *, should_stop):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if should_stop():
                    stopped.append(True)
                    raise ConversionInterrupted()
                time.sleep(0.005)
            raise AssertionError("never stopped")

        monkeypatch.setattr(backend, "_first_pass", slow_pass)
        start = trio.current_time()
        with trio.move_on_after(0.1):
            await backend.convert(ConvertRequest("nihao"), Collect())
        assert trio.current_time() - start < 0.5
        # The limiter slot comes back once the worker has seen the flag.
        with trio.fail_after(2):
            while backend.limiter.borrowed_tokens:
                await trio.sleep(0.01)
        assert stopped == [True]


# -- SSE and completion chunks (sans-IO) -----------------------------------------------

SSE_STREAM = (
    b"\xef\xbb\xbf: keep-alive\r\n\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: note\ndata: line one\ndata: line two\nid: 7\n\n"
    b"data:no-space\r\r"
    b"data\n\n"
    b"retry: 10\n\n"
)
SSE_EVENTS = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", event="note", id="7"),
    SSEEvent("no-space", id="7"),
    SSEEvent("", id="7"),
]


def test_sse_decoder_whole():
    assert SSEDecoder().feed(SSE_STREAM) == SSE_EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(SSE_STREAM)), max_size=12))
def test_sse_decoder_any_chunking(cuts):
    decoder = SSEDecoder()
    points = sorted(set(cuts))
    events = []
    start = 0
    for point in [*points, len(SSE_STREAM)]:
        events.extend(decoder.feed(SSE_STREAM[start:point]))
        start = point
    assert events == SSE_EVENTS


@given(st.binary(max_size=300))
def test_sse_decoder_arbitrary_bytes(data):
    decoder = SSEDecoder(max_event_bytes=64)
    try:
        for event in decoder.feed(data):
            assert isinstance(event.data, str)
    except SSEError:
        pass


def test_sse_decoder_limit():
    decoder = SSEDecoder(max_event_bytes=32)
    with pytest.raises(SSEError):
        decoder.feed(b"data: " + b"x" * 40)


def test_completion_events():
    assert parse_completion_event("[DONE]").done
    delta = parse_completion_event('{"choices":[{"delta":{"content":"你"},"finish_reason":null}]}')
    assert delta.content == "你" and not delta.done
    assert parse_completion_event('{"choices":[{"delta":{},"finish_reason":"stop"}]}').finish_reason == "stop"
    assert parse_completion_event('{"usage":{"total_tokens":3}}').content == ""
    with pytest.raises(CompletionError, match="quota"):
        parse_completion_event('{"error":{"message":"quota exceeded"}}')
    with pytest.raises(CompletionError):
        parse_completion_event("{broken")


@given(st.text(max_size=200))
def test_completion_event_never_raises_other_errors(data):
    try:
        parse_completion_event(data)
    except CompletionError:
        pass


def test_candidate_lines():
    lines = CandidateLines()
    assert lines.feed("1. 你好世") == []
    assert lines.feed("界\n2、你好时节\n- “你好") == ["你好世界", "你好时节"]
    assert lines.feed("世界”\n") == []  # a duplicate after cleaning
    assert lines.feed("\n\n3) 尼好") == []
    assert lines.flush() == ["尼好"]
    assert clean_candidate("  * 「西安」 ") == "西安"


@given(st.lists(st.text(alphabet="你好世界\n ab", max_size=8), max_size=10))
def test_candidate_lines_chunking_does_not_matter(pieces):
    one = CandidateLines()
    whole = one.feed("".join(pieces)) + one.flush()
    many = CandidateLines()
    split = [c for piece in pieces for c in many.feed(piece)] + many.flush()
    assert whole == split


def test_templates_are_checked():
    check_template("拼音：{pinyin} {context}", ["pinyin", "context"])
    with pytest.raises(ValueError, match="unknown placeholder {user}"):
        check_template("{user}", ["pinyin"])
    with pytest.raises(ValueError, match="positional"):
        check_template("{}", ["pinyin"])
    with pytest.raises(ValueError, match="attribute"):
        check_template("{pinyin.__class__}", ["pinyin"])
    with pytest.raises(ValueError):
        OpenAIBackendConfig(chat_prompts={"x": "{nope}"})


# -- the openai backend over real HTTP ---------------------------------------------------


async def test_openai_convert_streams_candidates_per_line(monkeypatch):
    monkeypatch.setenv("SY_TEST_KEY", "sk-test")

    def script(req):
        return FakeReply(chunks=("你好", "世界\n你好", "时节\n", "你好视界"))

    async with serve_fake_completions(script) as server:
        config = OpenAIBackendConfig(base_url=server.base_url, model="m1", api_key_env="SY_TEST_KEY", max_candidates=5)
        async with open_openai_backend(config, context=lambda: "上一句") as backend:
            sink = Collect()
            await backend.convert(ConvertRequest("nihaoshijie", schema_name="s", candidates_text=("你好",)), sink)
    assert [c.value for c in sink.sentences] == ["你好世界", "你好时节", "你好视界"]
    assert {c.comment_name for c in sink.sentences} == {"m1"}
    assert sink.calls == 3  # one report per completed line
    request = server.requests[0]
    assert request["model"] == "m1" and request["stream"] is True
    assert "nihaoshijie" in request["messages"][1]["content"] and "上一句" in request["messages"][1]["content"]
    assert server.headers[0]["authorization"] == "Bearer sk-test"


async def test_openai_convert_stops_at_max_candidates():
    async with serve_fake_completions(lambda req: FakeReply(chunks=("a\nb\nc\nd\n",))) as server:
        async with open_openai_backend(
            OpenAIBackendConfig(base_url=server.base_url, max_candidates=2, api_key_env="")
        ) as backend:
            sink = Collect()
            await backend.convert(ConvertRequest("x"), sink)
    assert [c.value for c in sink.sentences] == ["a", "b"]
    assert "authorization" not in server.headers[0]


async def test_openai_chat_streams_chunks_with_assistant_prompt():
    async with serve_fake_completions(lambda req: FakeReply(chunks=("你", "好", "！"), delay=0.01)) as server:
        config = OpenAIBackendConfig(
            base_url=server.base_url,
            chat_prompts={"default": "D", "translator": "翻译 {commit_text}"},
            chat_user_template="«{commit_text}»",
        )
        async with open_openai_backend(config) as backend:
            chunks: list[str] = []

            async def emit(text):
                chunks.append(text)

            await backend.chat(ChatRequest("hello", assistant_id="translator"), emit)
            await backend.chat(ChatRequest("hi", assistant_id="unknown-falls-back"), emit)
    assert chunks == ["你", "好", "！"] * 2
    assert server.requests[0]["messages"] == [
        {"role": "system", "content": "翻译 hello"},
        {"role": "user", "content": "«hello»"},
    ]
    assert server.requests[1]["messages"][0]["content"] == "D"


@pytest.mark.parametrize(
    "reply, words",
    [
        (FakeReply(status=500, error_body={"error": {"message": "model overloaded"}}), "HTTP 500: model overloaded"),
        (FakeReply(chunks=("半",), error_event="context length exceeded"), "context length exceeded"),
        (FakeReply(raw=b"data: {not json}\n\n"), "bad completion stream"),
        (
            FakeReply(raw=b'data: {"choices":[{"delta":{"content":"half"}}]}\n\n'),
            "ended before the answer was finished",
        ),
    ],
)
async def test_openai_failures_become_backend_errors(reply, words):
    async with serve_fake_completions(lambda req: reply) as server:
        async with open_openai_backend(OpenAIBackendConfig(base_url=server.base_url)) as backend:
            with pytest.raises(BackendError, match=words):
                await backend.chat(ChatRequest("x"), lambda text: trio.lowlevel.checkpoint())


async def test_openai_unknown_assistant_without_default():
    async with open_openai_backend(OpenAIBackendConfig(chat_prompts={"a": "A"})) as backend:
        with pytest.raises(BackendError, match="unknown assistant_id 'b'; configured: a"):
            await backend.chat(ChatRequest("x", assistant_id="b"), lambda text: trio.lowlevel.checkpoint())


async def test_openai_unreachable_endpoint():
    port = free_tcp_port()
    async with open_openai_backend(
        OpenAIBackendConfig(base_url=f"http://127.0.0.1:{port}/v1", connect_timeout=1)
    ) as backend:
        with pytest.raises(BackendError, match="cannot reach"):
            await backend.chat(ChatRequest("x"), lambda text: trio.lowlevel.checkpoint())


# -- non-streamed replies and error bodies (sans-IO, through the codec layer) -------------


def test_whole_completion_and_error_bodies():
    assert parse_whole_completion('{"choices":[{"message":{"content":"你好"}}]}'.encode()) == "你好"
    for bad in (b"", b"[]", b'{"choices":[]}', b'{"choices":[{"message":{"content":3}}]}', b"\xff"):
        with pytest.raises(CompletionError):
            parse_whole_completion(bad)
    assert error_message(b'{"error":{"message":"quota"}}') == "quota"
    assert error_message(b"<html>") is None and error_message(b'{"error":"x"}') is None
    assert encode_request({"model": "m", "messages": [{"content": "拼音"}]}) == (
        '{"model":"m","messages":[{"content":"拼音"}]}'.encode()
    )


@given(st.binary(max_size=200))
def test_reply_parsers_never_raise_anything_else(raw):
    try:
        assert isinstance(parse_whole_completion(raw), str)
    except CompletionError:
        pass
    assert error_message(raw) is None or isinstance(error_message(raw), str)
