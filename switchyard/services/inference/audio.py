"""PCM audio as the meeting system's Go client sends it, and resampling to 16 kHz.

What a caller may rely on:

* :func:`decode_pcm` reads signed 16-bit little-endian mono samples (``format: pcm``
  or ``s16le``) into float32 in ``[-1, 1)``; an odd byte count, another format or an
  empty buffer is an :class:`AudioError` whose text is meant for the peer.
* :func:`resample` maps any rate in ``[MIN_RATE, MAX_RATE]`` to another with linear
  interpolation (an integer factor such as 48 kHz to 16 kHz: the mean of each block
  of input samples, centred); when it lowers the rate it first averages over one
  output period (a box low-pass), so a tone above the new Nyquist frequency is damped instead of
  folding into speech band at full strength. The output has
  ``round(len(x) * dst / src)`` samples.
* :func:`audio_params` reads ``format`` and ``sample_rate`` from the task's string
  params (``{"format": "pcm", "sample_rate": "48000"}``), defaulting to pcm, 16 kHz.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["MAX_RATE", "MIN_RATE", "AudioError", "audio_params", "decode_pcm", "resample"]

MIN_RATE = 4_000
MAX_RATE = 384_000
_PCM_NAMES = frozenset({"pcm", "s16le", "pcm_s16le"})


class AudioError(ValueError):
    """Input audio that cannot be used; ``str(exc)`` is the message for the peer."""


def audio_params(params: Mapping[str, str]) -> tuple[str, int]:
    """``(format, sample_rate)`` from a task's params, validated."""
    fmt = str(params.get("format", "pcm")).strip().lower() or "pcm"
    if fmt not in _PCM_NAMES:
        raise AudioError(f"unsupported audio format {fmt!r} (expected pcm: s16le mono)")
    raw_rate = str(params.get("sample_rate", "16000")).strip()
    try:
        rate = int(float(raw_rate))
    except ValueError:
        raise AudioError(f"sample_rate {raw_rate!r} is not a number") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"sample_rate {rate} outside {MIN_RATE}..{MAX_RATE}")
    return fmt, rate


def decode_pcm(data: bytes) -> np.ndarray:
    """s16le mono bytes as float32 samples in ``[-1, 1)``."""
    if not data:
        raise AudioError("no audio: input_data is empty")
    if len(data) % 2:
        raise AudioError(f"s16le audio has an even byte count, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """``samples`` (1-D float) at ``src_rate`` resampled to ``dst_rate``."""
    x = np.asarray(samples, dtype=np.float32)
    if src_rate == dst_rate or x.size == 0:
        return x
    if src_rate <= 0 or dst_rate <= 0:
        raise AudioError("sample rates must be positive")
    n_out = round(x.size * dst_rate / src_rate)
    if src_rate % dst_rate == 0:  # integer factor (48 kHz -> 16 kHz): centred block means, no interpolation
        k = src_rate // dst_rate
        off = (k - 1) // 2
        need = n_out * k
        xp = np.concatenate([np.repeat(x[:1], off), x, np.repeat(x[-1:], max(0, need - x.size - off))])
        return xp[:need].reshape(n_out, k).mean(axis=1, dtype=np.float32)
    if src_rate > dst_rate:
        width = round(src_rate / dst_rate)
        if width > 1:
            kernel = np.full(width, 1.0 / width, dtype=np.float32)
            x = np.convolve(x, kernel, mode="same").astype(np.float32)
    positions = np.arange(n_out, dtype=np.float64) * (src_rate / dst_rate)
    return np.interp(positions, np.arange(x.size, dtype=np.float64), x).astype(np.float32)
