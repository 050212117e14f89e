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


def assert_ui_metadata(md: dict, *, columns: list[str] | None = None, preview: str = "preview", plots: tuple[str, ...] = (),
                       rows: bool = True):  # fmt: skip
    """What the Dagster UI shows for a materialization: `dagster/row_count` (unless `rows` is False: not a
    table), `dagster/column_schema` with the given leading columns, a Markdown table under `preview`, and
    each plot as an inline PNG. Returns the row count (None without one)."""
    count = md["dagster/row_count"].value if rows else None
    assert not rows or (isinstance(count, int) and count >= 0), count
    if columns is not None:
        names = [c.name for c in md["dagster/column_schema"].schema.columns]
        assert names[: len(columns)] == columns, names
        assert all(c.type for c in md["dagster/column_schema"].schema.columns)
    table = md[preview].value.splitlines()
    assert len(table) >= 2 and table[0].startswith("| ") and set(table[1]) <= {"|", "-", " ", ":"}, table[:3]
    for key in plots:
        assert md[key].value.startswith("![") and "](data:image/png;base64," in md[key].value, key
    return count
