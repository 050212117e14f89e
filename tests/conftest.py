from __future__ import annotations

from pathlib import Path

import pytest

from mimic_pipeline.core.shapes_world import ShapesWorldConfig, build_shapes_world

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"

real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} not present (only CI and developers have ../shared)")

TINY = ShapesWorldConfig(seed=7, n_eval_images=60, n_train_images=120, crowd_fraction=0.2)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small shapes world rendered once per test session (read-only for tests)."""
    root = tmp_path_factory.mktemp("world") / "shapes"
    return build_shapes_world(TINY, root, workers=1)
