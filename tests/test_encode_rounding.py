"""serve_app.ingress.rounded (numpy's rounding of the model's float32 probabilities, taken for
speed) must give exactly what ``round(v, 6)`` gave, or response bodies would change."""

import numpy as np

from serve_app.ingress.encode import rounded


def test_rounded_is_round_to_6_places_bit_for_bit():
    rng = np.random.default_rng(0)
    every_kind = np.concatenate(
        [
            rng.uniform(0, 1, 100_000).astype(np.float32),
            (np.arange(2**16) / 2**16).astype(np.float32),  # dyadic: exact ties at 1e-6 included
            rng.integers(0, 0x3F800001, 100_000, dtype=np.uint32).view(np.float32),  # any bits
        ]
    )
    expected = [round(v, 6) for v in every_kind.tolist()]
    assert list(map(repr, rounded(every_kind))) == list(map(repr, expected))
    as_float64 = every_kind[:1000].astype(np.float64)  # not the model's dtype: round() itself
    assert rounded(as_float64) == [round(v, 6) for v in as_float64.tolist()]
