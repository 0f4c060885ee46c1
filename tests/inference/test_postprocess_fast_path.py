"""One small row is post-processed in plain Python: it must give exactly what numpy gives."""

from __future__ import annotations

import numpy as np
import pytest

from switchyard.services.inference.models import ModelRegistry, digits_model


@pytest.fixture
async def digits() -> object:
    registry = ModelRegistry([digits_model()])
    await registry.preload()
    model = registry.loaded("digits")
    assert model is not None
    return model


def _numpy_path(model: object, outputs: list[np.ndarray]) -> list[dict[str, object]]:
    # two rows never take the fast path; the first row's answer is the numpy one
    doubled = [np.concatenate([out, out]) for out in outputs]
    return model._postprocess(doubled)[:1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
async def test_one_row_matches_the_numpy_path(digits: object, dtype: type) -> None:
    rng = np.random.default_rng(7)
    index = digits.output_index  # type: ignore[attr-defined]
    for trial in range(200):
        row = rng.integers(0, 5, size=(1, 10)) if trial % 2 else rng.normal(size=(1, 10))
        outputs = [np.zeros((1,), dtype=np.int64), np.zeros((1, 10), dtype=np.float32)]
        outputs[index] = row.astype(dtype)  # integer rows have ties: the first maximum wins
        fast = digits._postprocess(outputs)  # type: ignore[attr-defined]
        assert fast == _numpy_path(digits, outputs)
        assert type(fast[0]["confidence"]) is float


async def test_one_row_with_nan_is_refused_like_the_numpy_path(digits: object) -> None:
    index = digits.output_index  # type: ignore[attr-defined]
    outputs = [np.zeros((1,), dtype=np.int64), np.zeros((1, 10), dtype=np.float32)]
    outputs[index][0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        digits._postprocess(outputs)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="NaN or infinite"):
        _numpy_path(digits, outputs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
async def test_one_row_with_infinity_or_huge_scores(digits: object, dtype: type) -> None:
    index = digits.output_index  # type: ignore[attr-defined]
    outputs = [np.zeros((1,), dtype=np.int64), np.zeros((1, 10), dtype=dtype)]
    outputs[index][0, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        digits._postprocess(outputs)  # type: ignore[attr-defined]
    big = np.finfo(dtype).max
    outputs[index][0, :] = big  # finite, though their sum is not: still a valid answer
    outputs[index][0, 5] = -big
    assert digits._postprocess(outputs) == _numpy_path(digits, outputs)  # type: ignore[attr-defined]
