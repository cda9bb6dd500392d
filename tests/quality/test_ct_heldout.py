"""The bundled CT muscle weights on held-out phantoms (an anatomy model and settings that
training never used), through the daemon: dcmtk storescu -> acqflow serve -> SEG on disk,
decoded by highdicom and scored against the truth instance by instance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.quality.ct_heldout import FIRST_SEED, failure_detection, held_out_series, run_through_daemon

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Two encodings and orientations of the plan, other seeds than the card's measurement.
SERIES = [(FIRST_SEED + 900, "jpeg-ls", "oblique"), (FIRST_SEED + 901, "int16", "descending")]


@pytest.mark.timeout(600)
def test_bundled_weights_segment_held_out_phantoms_through_the_daemon(tmp_path: Path) -> None:
    series = [held_out_series(seed, encoding, orientation, matrix=256)
              for seed, encoding, orientation in SERIES]
    results = run_through_daemon(series, tmp_path)
    mean = float(np.mean([r["mean_dice"] for r in results]))
    # Weights 2.1.0 with body size normalisation measured 0.920 and 0.859 on these two
    # (0.812 over the eight series of docs/models/ct-muscle.md); 2.0.0 on the fixed grid
    # 0.899 and 0.761, 1.1.0 0.38 on held-out series. The bar is issue 13's.
    assert mean >= 0.80, results
    assert all(r["mean_dice"] >= 0.75 for r in results), results
    for r in results:  # the SR gives every segmented structure its review scores
        assert r["scores"] and set(r["scores"]) <= set(r["dice"]), r
        assert all(0.0 <= s["disagreement"] <= 1.0 for s in r["scores"].values()), r
    auroc = failure_detection(results)
    # The samples' disagreement ranks the failed structures better than the mean entropy
    # (0.882 against 0.829 on these two; 0.885 against 0.865 on the eight series of
    # docs/models/ct-muscle.md).
    assert auroc["disagreement"] > 0.8 and auroc["disagreement"] >= auroc["mean_uncertainty"], auroc
