"""The aipara wire messages (sans-IO): parsing, validation and reply shapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given

from switchyard.protocols.codec import json_codec
from switchyard.services.aipara.protocol import (
    COMMAND_KINDS,
    AiBadRequest,
    AiCandidate,
    BadRequest,
    ChatRequest,
    ClientCommand,
    ClipboardData,
    CommandError,
    ConvertProgress,
    ConvertRequest,
    Ping,
    Pong,
    SetConfig,
    SetOption,
    StateReport,
    ai_error_reply,
    chat_chunk,
    chat_error,
    command_from_dict,
    command_response,
    command_to_wire,
    error_response,
    parse_ai_request,
    parse_rime_request,
)
from switchyard.testing.aipara import (
    ai_request_dicts,
    chat_dicts,
    commit_dicts,
    convert_dicts,
    hostile_bodies,
    outbox_commands,
    rime_request_dicts,
    state_dicts,
)

# What the C++ client sends (tcp_zmq.cc SyncWithServer / SendConvertRequest / SendChatMessage).
CPP_STATE = (
    b'{"messege_type":"state","is_composing":true,"timestamp":1753022593756,'
    b'"switches_option":[{"name":"ascii_punct","type":"simple","state":false,"state_index":0}],'
    b'"properties":[{"name":"keepon_chat_trigger","type":"string","value":""}]}'
)
CPP_COMMIT = (
    '{"messege_type":"commit","is_composing":false,"timestamp":1753022593756,"switches_option":[],'
    '"properties":{},"current_app":"org.gnome.gedit","commit_pinyin":"nihao","commit_text":"你好"}'
).encode()


def test_cpp_state_request_parses():
    req = parse_rime_request(CPP_STATE)
    assert isinstance(req, StateReport)
    assert req.kind == "state"
    assert req.is_composing is True
    assert req.timestamp == 1753022593756
    assert req.switches[0].name == "ascii_punct" and req.switches[0].state is False
    assert req.properties == {"keepon_chat_trigger": ""}
    assert req.commit is None


def test_cpp_commit_request_parses():
    req = parse_rime_request(CPP_COMMIT)
    assert isinstance(req, StateReport) and req.kind == "commit"
    assert req.commit is not None
    assert (req.commit.text, req.commit.pinyin, req.commit.current_app) == ("你好", "nihao", "org.gnome.gedit")


def test_embedded_and_top_level_commands():
    state = parse_rime_request(
        json_codec.encode(
            {
                "messege_type": "state",
                "command_message": {
                    "messege_type": "command",
                    "command": "enter",
                    "command_value": "x",
                    "timestamp": 5,
                    "client_id": "lua_tcp_client",
                },
            }
        )
    )
    assert isinstance(state, StateReport)
    assert state.command == ClientCommand("enter", "x", 5, "lua_tcp_client")
    paste = parse_rime_request(
        b'{"messege_type":"command","command":"paste","timestamp":1,"client_id":"lua_tcp_client"}'
    )
    assert paste == ClientCommand("paste", None, 1, "lua_tcp_client")


def test_pong_is_a_request():
    assert parse_rime_request(b'{"response": "pong"}') == Pong()


@pytest.mark.parametrize(
    "body, words",
    [
        (b"", "empty"),
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1,2]", "JSON object, got array"),
        (b'{"is_composing": true}', "missing 'messege_type'"),
        (b'{"messege_type": 7}', "must be a string, got number"),
        (b'{"messege_type": "dance"}', "unknown messege_type 'dance'"),
        (b'{"messege_type": "state", "is_composing": "yes"}', "'is_composing' must be a boolean, got string"),
        (b'{"messege_type": "state", "switches_option": {}}', "'switches_option' must be an array"),
        (b'{"messege_type": "state", "switches_option": [{"state": true}]}', "switches_option[0]: missing 'name'"),
        (b'{"messege_type": "state", "properties": 3}', "'properties' must be an object or an array"),
        (b'{"messege_type": "state", "timestamp": NaN}', "'timestamp' must be a number"),
        (b'{"messege_type": "commit", "commit_text": 5}', "'commit_text' must be a string"),
        (b'{"messege_type": "command"}', "missing 'command'"),
        (b'{"messege_type": "state", "timestamp": ' + b"9" * 5000 + b"}", "malformed JSON"),
    ],
)
def test_bad_rime_requests_say_what_is_wrong(body, words):
    req = parse_rime_request(body)
    assert isinstance(req, BadRequest)
    assert words in req.reason


def test_size_limit():
    body = json_codec.encode({"messege_type": "state", "properties": {"k": "x" * 200}})
    assert isinstance(parse_rime_request(body, max_bytes=len(body)), StateReport)
    bad = parse_rime_request(body, max_bytes=len(body) - 1)
    assert isinstance(bad, BadRequest) and "too large" in bad.reason


@given(hostile_bodies())
def test_arbitrary_bytes_never_crash_and_always_yield_one_reply(body):
    req = parse_rime_request(body)
    if isinstance(req, BadRequest):
        reply = error_response(client_id="c", reason=req.reason, timestamp_ms=1)
    else:
        reply = command_response(client_id="c", commands=[], timestamp_ms=1)
    decoded = json.loads(json_codec.encode(reply))
    assert decoded["messege_type"] == "command_response"
    assert isinstance(decoded["command_messege"], list)
    ai = parse_ai_request(body)
    assert isinstance(ai, (ConvertRequest, ChatRequest, AiBadRequest))
    if isinstance(ai, AiBadRequest):
        json_codec.encode(ai_error_reply(ai))


@given(rime_request_dicts())
def test_every_client_request_parses(obj):
    req = parse_rime_request(json_codec.encode(obj))
    assert not isinstance(req, BadRequest), req


@given(state_dicts() | commit_dicts())
def test_state_round_trip(obj):
    req = parse_rime_request(json_codec.encode(obj))
    assert isinstance(req, StateReport)
    assert req.kind == obj["messege_type"]
    assert req.is_composing == obj["is_composing"]
    assert [s.name for s in req.switches] == [s["name"] for s in obj["switches_option"]]
    props = obj["properties"]
    expected = props if isinstance(props, dict) else {p["name"]: p["value"] for p in props}
    assert req.properties == expected
    if req.commit is not None:
        assert req.commit.text == obj["commit_text"]
        assert req.commit.pinyin == obj["commit_pinyin"]


@given(convert_dicts())
def test_convert_round_trip(obj):
    req = parse_ai_request(json_codec.encode(obj))
    assert isinstance(req, ConvertRequest)
    assert req.confirmed_pos_input == obj["confirmed_pos_input"]
    assert req.candidates_text == tuple(obj.get("candidates_text", ()))
    if obj["timeout"] > 0:
        assert req.timeout == pytest.approx(obj["timeout"])
    else:
        assert req.timeout is None


@given(chat_dicts())
def test_chat_round_trip(obj):
    req = parse_ai_request(json_codec.encode(obj))
    assert isinstance(req, ChatRequest)
    assert (req.commit_text, req.assistant_id, req.response_key) == (
        obj["commit_text"],
        obj["assistant_id"],
        obj.get("response_key"),
    )


@pytest.mark.parametrize(
    "body, kind, words",
    [
        (b'{"messege_type":"convert"}', "convert", "missing 'confirmed_pos_input'"),
        (
            b'{"messege_type":"convert","confirmed_pos_input":"ni","timeout":"soon"}',
            "convert",
            "'timeout' must be a number",
        ),
        (
            b'{"messege_type":"convert","confirmed_pos_input":"ni","candidates_text":[1]}',
            "convert",
            "candidates_text[0]",
        ),
        (b'{"messege_type":"chat","response_key":"k"}', "chat", "missing 'commit_text'"),
        (b'{"messege_type":"speech_recognition_optimize"}', "speech_recognition_optimize", "unsupported"),
    ],
)
def test_bad_ai_requests_answer_in_their_kind_shape(body, kind, words):
    bad = parse_ai_request(body)
    assert isinstance(bad, AiBadRequest) and bad.messege_type == kind and words in bad.reason
    reply = ai_error_reply(bad)
    if kind == "convert":
        assert reply["messege_type"] == "convert_result_stream"
        assert reply["is_final"] and reply["is_error"] and words in reply["error"]
    elif kind == "chat":
        assert reply["response_key"] == "k" and reply["is_final"] and reply["status"] == "error"
        assert words in reply["data"]["message"]
    else:
        assert reply["status"] == "error" and words in reply["error"]


def test_convert_timeout_zero_means_server_default():
    req = parse_ai_request(b'{"messege_type":"convert","confirmed_pos_input":"ni","timeout":0}')
    assert isinstance(req, ConvertRequest) and req.timeout is None


def test_convert_progress_is_cumulative_and_deduplicated():
    progress = ConvertProgress(max_cloud=3)
    assert progress.add_cloud(["你好", "你", "你好"])
    first = progress.message(is_final=False)
    assert progress.add_ai([AiCandidate("你好世界", "engine")])
    assert not progress.add_ai([AiCandidate("你好世界", "other")])
    assert progress.add_cloud(["尼", "泥"])
    final = progress.message(is_final=True, is_timeout=True)
    assert first["cloud_candidates"] == [{"value": "你好"}, {"value": "你"}]
    assert first["is_partial"] and not first["is_final"]
    assert final["cloud_candidates"] == [{"value": "你好"}, {"value": "你"}, {"value": "尼"}]
    assert final["ai_candidates"] == [{"value": "你好世界", "comment_name": "engine"}]
    assert final["is_final"] and final["is_timeout"] and not final["is_error"]
    err = progress.message(is_final=True, error="backend down")
    assert err["is_error"] and err["error"] == "backend down"


def test_convert_progress_ranked_update_reorders_without_losing():
    progress = ConvertProgress(max_ai=4)
    progress.add_ai([AiCandidate("a", "dag"), AiCandidate("b", "dag"), AiCandidate("c", "dag")])
    assert progress.add_ai([AiCandidate("b", "both"), AiCandidate("d", "hmm")], ranked=True)
    assert [(c.value, c.comment_name) for c in progress.ai] == [("b", "both"), ("d", "hmm"), ("a", "dag"), ("c", "dag")]
    assert not progress.add_ai([AiCandidate("b", "both"), AiCandidate("d", "hmm")], ranked=True)


def test_chat_shapes():
    assert chat_chunk(content="你", response_key="k1", is_final=False) == {
        "messege_type": "chat_result",
        "content": "你",
        "is_final": False,
        "response_key": "k1",
    }
    err = chat_error(reason="no chat model", response_key=None)
    assert err["is_final"] and err["error"] == err["error_msg"] == err["data"]["message"] == "no chat model"
    assert "response_key" not in err


def test_reply_keeps_the_wire_spelling():
    reply = command_response(client_id="c1", commands=[command_to_wire(Ping(), 5)], timestamp_ms=9)
    encoded = json_codec.encode(reply).decode()
    assert '"messege_type":"command_response"' in encoded
    assert '"command_messege":[{"command":"ping"' in encoded
    assert reply["response"] == "rime_state_received" and reply["client_id"] == "c1" and reply["timestamp"] == 9


def test_command_wire_forms_match_what_the_client_reads():
    assert command_to_wire(SetOption("full_shape", True), 7) == {
        "command": "set_option",
        "command_type": "option",
        "option_name": "full_shape",
        "option_value": True,
        "timestamp": 7,
    }
    clip = command_to_wire(ClipboardData(text="abc"), 1)
    assert clip["clipboard"] == {"text": "abc"} and clip["success"] is True
    failed = command_to_wire(ClipboardData(success=False, error="empty"), 1)
    assert failed["clipboard"]["error"] == "empty" and failed["error"] == "empty"
    deleted = command_to_wire(SetConfig("a.b"), 1)
    assert deleted["config_value"] is None and deleted["config_path"] == "a.b"


@given(outbox_commands())
def test_command_dict_round_trip(command):
    wire = json.loads(json_codec.encode(command_to_wire(command, 3)))
    if isinstance(command, ClipboardData):
        assert wire["clipboard"]["text"] == command.text
        return
    assert command_from_dict(wire) == command


@pytest.mark.parametrize(
    "data, words",
    [
        ({"command": "fly"}, "unknown command"),
        ({"option_name": "x"}, "string 'command'"),
        ({"command": "set_option", "option_name": "x", "option_value": "yes"}, "option_value"),
        (
            {"command": "set_option", "option_name": "x", "option_value": True, "colour": 1},
            "unexpected field(s) colour",
        ),
        ({"command": "set_config", "config_path": "x", "config_value": float("nan")}, "JSON value"),
    ],
)
def test_bad_commands_are_refused_clearly(data, words):
    with pytest.raises(CommandError, match=None) as info:
        command_from_dict(data)
    assert words in str(info.value)


def test_all_seven_commands_known():
    assert set(COMMAND_KINDS) == {
        "set_option",
        "set_property",
        "set_config",
        "clipboard_data",
        "paste_executed",
        "paste_failed",
        "ping",
    }


@given(ai_request_dicts())
def test_ai_requests_parse(obj):
    assert not isinstance(parse_ai_request(json_codec.encode(obj)), AiBadRequest)
