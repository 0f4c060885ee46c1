"""Voice activity detection with silero-vad's ONNX model, run by onnxruntime.

The model file ships inside the ``silero-vad`` wheel; that wheel declares a hard
dependency on torch, which this module never imports, so install it with
``pip install --no-deps silero-vad``. The file is located through the installed
distribution's metadata (importing the ``silero_vad`` package would import torch).

What a caller may rely on:

* :meth:`SileroVad.probabilities` runs the model over 16 kHz audio in 512-sample
  windows, each fed with the previous window's last 64 samples as context and the
  recurrent state the previous window returned; state and context start at zero for
  every call, so two tasks never share state. It is safe to call from several threads
  at once (the onnxruntime session holds no per-call state).
* :meth:`SileroVad.segments` turns the probabilities into speech segments
  ``[{start_ms, end_ms, probability}]`` the way silero's ``get_speech_timestamps``
  does: speech starts at a window with probability ``>= threshold``, ends once the
  probability stays below ``threshold - 0.15`` for ``min_silence_ms``; segments
  shorter than ``min_speech_ms`` are dropped, the rest padded by ``speech_pad_ms``.
  ``probability`` is the mean window probability inside the segment.
* :meth:`SileroVad.detect` is the task: s16le PCM bytes plus the string params
  (``format``, ``sample_rate``, optional ``threshold``) to the result dict
  ``{segments, speech_ms, duration_ms, confidence}``. Bad input raises
  :class:`~switchyard.services.inference.audio.AudioError`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import trio

from switchyard.services.inference.audio import AudioError, audio_params, decode_pcm, resample

if TYPE_CHECKING:
    from switchyard.services.inference.engine import InferenceEngine
    from switchyard.services.inference.protocol import TaskRequest

__all__ = ["TASK_TYPE", "SileroVad", "VadConfig", "VadUnavailable", "find_model", "register_vad"]

TASK_TYPE = "voice_activity_detection"
RATE = 16_000
WINDOW = 512
CONTEXT = 64


class VadUnavailable(RuntimeError):
    """The silero-vad model file (or onnxruntime) is not installed."""


def find_model(name: str = "silero_vad.onnx") -> Path:
    """Path of the ONNX file inside the installed ``silero-vad`` distribution."""
    try:
        dist = importlib.metadata.distribution("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        raise VadUnavailable("silero-vad is not installed: pip install --no-deps silero-vad") from None
    path = Path(str(dist.locate_file(f"silero_vad/data/{name}")))
    if not path.is_file():
        raise VadUnavailable(f"silero-vad is installed but {path} is missing")
    return path


@attrs.frozen
class VadConfig:
    """Detection settings (manifest table ``[actor.config.vad]``)."""

    #: "" = the model bundled in the silero-vad wheel.
    model_path: str = ""
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    #: Longest audio accepted per task, in seconds (after decoding).
    max_audio_seconds: float = 600.0
    intra_op_threads: int = 1


class SileroVad:
    """One loaded silero-vad session."""

    def __init__(self, config: VadConfig | None = None) -> None:
        import onnxruntime as ort

        self.config = config or VadConfig()
        path = Path(self.config.model_path) if self.config.model_path else find_model()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, self.config.intra_op_threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self._sr = np.array(RATE, dtype=np.int64)

    def probabilities(self, audio16k: np.ndarray) -> np.ndarray:
        """Speech probability of each 512-sample window (the last one zero-padded)."""
        x = np.asarray(audio16k, dtype=np.float32)
        n = -(-x.size // WINDOW)
        padded = np.zeros(CONTEXT + n * WINDOW, dtype=np.float32)
        padded[CONTEXT : CONTEXT + x.size] = x
        state = np.zeros((2, 1, 128), dtype=np.float32)
        out = np.empty(n, dtype=np.float32)
        run = self.session.run
        for i in range(n):
            frame = padded[i * WINDOW : i * WINDOW + CONTEXT + WINDOW].reshape(1, -1)
            prob, state = run(None, {"input": frame, "state": state, "sr": self._sr})
            out[i] = float(prob[0, 0])
        return out

    def segments(self, probs: np.ndarray, n_samples: int, threshold: float | None = None) -> list[dict[str, Any]]:
        """Speech segments (ms) from window probabilities over ``n_samples`` of 16 kHz audio."""
        cfg = self.config
        thr = cfg.threshold if threshold is None else threshold
        neg = max(thr - 0.15, 0.01)
        min_silence = cfg.min_silence_ms * RATE // 1000
        raw: list[tuple[int, int]] = []
        start: int | None = None
        temp_end = 0
        for i, p in enumerate(probs):
            pos = i * WINDOW
            if p >= thr:
                temp_end = 0
                if start is None:
                    start = pos
            elif start is not None and p < neg:
                if not temp_end:
                    temp_end = pos
                if pos - temp_end >= min_silence:
                    raw.append((start, temp_end))
                    start, temp_end = None, 0
        if start is not None:
            raw.append((start, n_samples))
        min_speech = cfg.min_speech_ms * RATE // 1000
        pad = cfg.speech_pad_ms * RATE // 1000
        result: list[dict[str, Any]] = []
        for s, e in raw:
            if e - s < min_speech:
                continue
            window_probs = probs[s // WINDOW : max(s // WINDOW + 1, -(-e // WINDOW))]
            s_pad, e_pad = max(0, s - pad), min(n_samples, e + pad)
            if result and s_pad <= result[-1]["_end"]:
                s_pad = result[-1]["_end"]
            result.append(
                {
                    "start_ms": int(s_pad * 1000 // RATE),
                    "end_ms": int(e_pad * 1000 // RATE),
                    "probability": round(float(window_probs.mean()), 4),
                    "_end": e_pad,
                }
            )
        for seg in result:
            del seg["_end"]
        return result

    def detect(self, data: bytes, params: Mapping[str, str]) -> dict[str, Any]:
        """The ``voice_activity_detection`` result for one task's PCM input."""
        _, rate = audio_params(params)
        samples = decode_pcm(data)
        seconds = samples.size / rate
        if seconds > self.config.max_audio_seconds:
            raise AudioError(f"audio is {seconds:.1f} s long, max_audio_seconds is {self.config.max_audio_seconds:g}")
        threshold = None
        if "threshold" in params:
            try:
                threshold = float(params["threshold"])
            except ValueError:
                raise AudioError(f"threshold {params['threshold']!r} is not a number") from None
            if not 0.0 < threshold < 1.0:
                raise AudioError(f"threshold {threshold} outside (0, 1)")
        audio = resample(samples, rate, RATE)
        probs = self.probabilities(audio)
        segments = self.segments(probs, audio.size, threshold)
        return {
            "segments": segments,
            "speech_ms": sum(s["end_ms"] - s["start_ms"] for s in segments),
            "duration_ms": round(seconds * 1000),
            "confidence": max((s["probability"] for s in segments), default=0.0),
        }


async def register_vad(engine: InferenceEngine, config: VadConfig) -> SileroVad:
    """Load silero-vad (in a thread) and serve ``voice_activity_detection`` from ``engine``."""
    vad = await trio.to_thread.run_sync(SileroVad, config)

    async def detect(request: TaskRequest) -> dict[str, Any]:
        return await trio.to_thread.run_sync(
            vad.detect, request.input_data, dict(request.params), limiter=engine.limiter
        )

    engine.handlers[TASK_TYPE] = detect
    return vad
