"""The meeting system's Go client (tests/inference/go_peer: the seed's ZMQClient.SendAITask,
REQ behind a mutex, encoding/json with []byte as base64) against the inference service."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from switchyard import open_system
from switchyard.apps.models import digits_heldout
from switchyard.services.inference.service import InferenceActor, InferenceConfig
from switchyard.testing import free_tcp_endpoint
from switchyard.testing.go import build_go_peer
from switchyard.testing.inference import bundled_digit_predictions

SOURCE = Path(__file__).parent / "go_peer" / "main.go"
HELD = digits_heldout()


@pytest.fixture(scope="module")
def go_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("go_peer")
    pixels = folder / "pixels.bin"
    pixels.write_bytes(HELD.pixels.astype("uint8").tobytes())
    yield build_go_peer(SOURCE, folder / "inference_peer"), pixels


def run_client(peer: Path, endpoint: str, tasks: int, pixels: Path, model_path: str) -> dict:
    done = subprocess.run(
        [str(peer), "client", endpoint, str(tasks), str(pixels), model_path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def against_the_service(go_peer: tuple[Path, Path], tasks: int, model_path: str) -> dict:
    peer, pixels = go_peer
    endpoint = free_tcp_endpoint()
    async with open_system("go-peer") as system:
        config = InferenceConfig(endpoint=endpoint, events_endpoint="")
        await system.spawn(InferenceActor, name="inference", config=config)
        return await trio.to_thread.run_sync(run_client, peer, endpoint, tasks, pixels, model_path)


async def test_go_client_gets_every_digit_right_in_lockstep(go_peer: tuple[Path, Path]) -> None:
    summary = await against_the_service(go_peer, 400, "/models/digits_mlp.onnx")
    expected = [str(p) for p in bundled_digit_predictions()]
    assert summary["ok"] == 400
    assert summary["labels"] == [expected[i % len(HELD.labels)] for i in range(400)]


async def test_go_client_reads_an_error_reply_for_an_unknown_model(go_peer: tuple[Path, Path]) -> None:
    summary = await against_the_service(go_peer, 3, "/models/whisper_base.onnx")
    assert summary["ok"] == 0
    assert all(label.startswith("error: model_path '/models/whisper_base.onnx'") for label in summary["labels"])
