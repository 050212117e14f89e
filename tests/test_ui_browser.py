"""The Dagster UI as a user sees it, in a real browser (headless Chromium driven by Playwright).

A small data folder is prepared first through Dagster on the same instance the webserver then shows
(a shapes world, its index, the four eval sets, an untrained tiny checkpoint evaluated on one task), so
the pages have materializations, metadata and check results. Then `mimic ui` starts (webserver + daemon)
and the test reads the rendered pages: the asset graph with every group and asset, an evaluation
asset's description, row count, column schema, Markdown preview table and plot image, and the eval
set's asset checks. Screenshots go to the test's tmp folder and to `test-artifacts/ui/` (git-ignored);
`docs/asset-graph.png` in the README is the graph screenshot of this test.

Needs /usr/bin/chromium (Debian's `chromium`) and the `playwright` Python package (the test extra);
Playwright's own browser download is never used. Skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import shutil
import time

import dagster as dg
import pytest

from mimic_pipeline.defs import evaluation as E

from .conftest import REPO
from .test_dagster_datasets import run, shapes_eval_sets
from .test_dagster_evaluation import copy_in
from .test_webserver import graphql, mimic_ui

CHROMIUM = "/usr/bin/chromium"
# What works on a closed network: nothing reaches out at start-up, no sandbox (root in CI), no GPU.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts" / "ui"
GROUPS = ["annotations", "datasets", "training", "evaluation", "attention"]
ASSETS = ["shapes_world", "annotation_index", "eval_items", "train_items", "single_image_items", "baseline_scores",
          "base_checkpoint", "full_ft_checkpoint", "lora_checkpoint", "checkpoints", "predictions", "eval_metrics",
          "evaluation_report", "attention_stats"]  # fmt: skip
# lora_masked_checkpoint is drawn shortened ("lora_m…_checkpoint") in the graph; it is checked on its own
TIMEOUT_MS = 60_000  # two busy cores: pages can take a while to fetch and render


def sync_playwright_or_skip():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/test does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is missing: pip install -e '.[test]'")
    return sync_playwright


def prepare(tmp_path):
    """Data and a Dagster home whose instance already holds materializations, check results and the
    `tiny` checkpoint's evaluation of the counting set. Returns (data, home, metadata by asset)."""
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        defs, _ = shapes_eval_sets(data, items_per_cell=2, instance=instance)
        copy_in(data / "checkpoints" / "tiny")
        # registered before the daemon's first tick: automation leaves existing partitions to the user
        instance.add_dynamic_partitions("checkpoint", ["tiny"])
        key = dg.MultiPartitionKey({"checkpoint": "tiny", "task": "counting"})
        assert run(defs, instance, E.predictions, key, {"variants": ["pool1"], "max_new_tokens": 4}).success
        assert run(defs, instance, E.eval_metrics, key).success
        metadata = {name: instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata
                    for name in ("eval_items", "predictions", "eval_metrics")}  # fmt: skip
    return data, home, metadata


def shoot(page, tmp_path, name: str):
    """A screenshot in the test's tmp folder, copied to test-artifacts/ui/."""
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def dismiss_welcome(port: int, page):
    """A new instance greets its first visitor with a 'Join the Dagster community' dialog, seconds after a
    page loads (late on a busy machine), over whatever the test clicks. Mark it seen, as its Skip button
    does (the UI's own mutation), and should it show all the same, skip it before the next action."""
    assert graphql(port, "mutation { setNuxSeen }")["setNuxSeen"] is True
    skip = page.get_by_role("dialog").get_by_role("button", name="Skip")
    page.add_locator_handler(skip, lambda button: button.click())


def fit_graph(page, names: list[str]):
    """Zoom and drag the graph so that every node named is drawn, as large as fits, in the middle of the canvas.

    The graph draws only the nodes inside its viewport; the union of the drawn labels is its extent."""
    canvas = page.locator("[class*=svgContainer]").first.locator("xpath=../..")  # the pannable area (cursor: grab)
    x, y, w, h = (lambda b: (b["x"], b["y"] + 60, b["width"], b["height"] - 60))(canvas.bounding_box())  # under the search bar

    def extent(require_all: bool = True):
        boxes = [visible_text(page, n).first.bounding_box() if visible_text(page, n).count() else None for n in names]
        if None in boxes and require_all or not any(boxes):
            return None
        boxes = [b for b in boxes if b]
        left, top = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
        return left, top, max(b["x"] + b["width"] for b in boxes) - left, max(b["y"] + b["height"] for b in boxes) - top

    def fits() -> bool:  # with room for the node and group frames around the labels
        box = extent()
        return box is not None and box[2] + 200 <= w and box[3] + 200 <= h

    def center():
        box = extent(require_all=False)
        start = (x + 20, y + 20)  # a corner of the canvas, outside the graph
        dx, dy = (x + w / 2) - (box[0] + box[2] / 2), (y + h / 2) - (box[1] + box[3] / 2)
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(start[0] + dx, start[1] + dy, steps=10)
        page.mouse.up()
        page.wait_for_timeout(500)

    def zoom(direction: str):
        page.get_by_role("button", name=f"zoom_{direction}").click()
        page.wait_for_timeout(300)
        center()

    center()
    for _ in range(12):
        if fits():
            break
        zoom("out")
    for _ in range(8):  # as large as still fits
        zoom("in")
        if not fits():
            zoom("out")
            break


def visible_text(page, text: str):
    return page.get_by_text(text, exact=True).filter(visible=True)


def open_markdown(page, key: str):
    """Long Markdown metadata is shown as '[Show Markdown]': open the dialog of the entry `key`."""
    page.locator("tr", has_text=key).get_by_text("[Show Markdown]").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(key).first.wait_for()
    return dialog


@pytest.mark.slow
def test_the_asset_graph_and_asset_pages_show_descriptions_metadata_plots_and_checks(tmp_path):
    sync_playwright = sync_playwright_or_skip()
    started = time.monotonic()
    data, home, metadata = prepare(tmp_path)
    prepared_s = time.monotonic() - started
    with mimic_ui(tmp_path, data, home) as (port, _), sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a new, empty --user-data-dir
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1800, "height": 1050},
        )  # fmt: skip
        browser.set_default_timeout(TIMEOUT_MS)
        page = browser.new_page()
        dismiss_welcome(port, page)
        try:
            check_pages(page, f"http://127.0.0.1:{port}", metadata, tmp_path)
        except Exception:
            shoot(page, tmp_path, "failure")
            raise
        finally:
            browser.close()
    print(f"prepared in {prepared_s:.0f} s, whole test {time.monotonic() - started:.0f} s; screenshots in {ARTIFACTS}")


def check_pages(page, base: str, metadata: dict, tmp_path):
    # 1. the global asset graph: every group, then every asset once the groups are expanded
    page.goto(f"{base}/asset-groups", wait_until="networkidle")
    for group in GROUPS:
        visible_text(page, group).first.wait_for()
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_text("Expand all groups").filter(visible=True).click()
    page.get_by_text("Change graph to vertical orientation").filter(visible=True).click()  # the graph is deep, not wide
    page.keyboard.press("Escape")
    page.get_by_text("Hide navigation").click()  # room for the graph: no side bar, no asset tree
    page.locator("button:has([aria-label='panel_show_right'])").last.click()
    fit_graph(page, [*GROUPS, *ASSETS])
    for name in [*GROUPS, *ASSETS]:  # group boxes and asset nodes drawn in the graph itself
        assert visible_text(page, name).count() >= 1, f"{name} is not drawn in the asset graph"
    visible_text(page, "lora_m…_checkpoint").first.wait_for()
    shoot(page, tmp_path, "asset-graph")

    # 2. an evaluation asset: description, row count, columns, preview table, plot, definition
    page.goto(f"{base}/assets/eval_metrics", wait_until="networkidle")
    page.get_by_text("Per-cell metrics of one checkpoint on one task").wait_for()
    md = metadata["eval_metrics"]
    status = page.get_by_text("Row count").locator("xpath=..")
    assert str(md["dagster/row_count"].value) in status.inner_text()
    for column in md["dagster/column_schema"].schema.columns:
        assert visible_text(page, column.name).count() >= 1, column.name
    preview = page.locator("tr", has_text="preview").locator("table")  # the Markdown table, rendered
    assert preview.locator("th").all_inner_texts() == ["variant", "axis", "accuracy", "n", "ci_low", "ci_high"]
    assert preview.locator("tbody tr").count() == 4  # the four counting studies of pool1
    for label in ("Group", "evaluation", "Owners", "mimic", "Kinds", "DuckDB", "Code location", "mimic-pipeline"):
        assert visible_text(page, label).count() >= 1, label
    shoot(page, tmp_path, "eval_metrics")
    preview.scroll_into_view_if_needed()  # the page scrolls inside the app, not the window
    shoot(page, tmp_path, "eval_metrics-metadata")
    dialog = open_markdown(page, "plot_counting_spread")
    image = dialog.locator("img")
    assert image.get_attribute("alt") == "tiny: counting spread"
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert image.evaluate("i => i.complete && i.naturalWidth") > 100  # decoded, not a broken image
    shoot(page, tmp_path, "eval_metrics-plot")
    dialog.get_by_role("button", name="Close").click()

    # 3. predictions: row count, stable numeric keys (plotted over runs)
    page.goto(f"{base}/assets/predictions", wait_until="networkidle")
    page.get_by_text("One checkpoint's answers to one task's eval set").wait_for()
    status = page.get_by_text("Row count").locator("xpath=..")
    assert str(metadata["predictions"]["dagster/row_count"].value) in status.inner_text()
    for key in ("accuracy_pool1", "items_per_s_pool1", "raw_answer"):
        assert visible_text(page, key).count() >= 1, key
    page.get_by_text("accuracy_pool1", exact=True).scroll_into_view_if_needed()
    shoot(page, tmp_path, "predictions")

    # 4. the eval set: its preview (a long table behind '[Show Markdown]') and its blocking checks
    page.goto(f"{base}/assets/eval_items", wait_until="networkidle")
    page.get_by_text("MIMIC eval set of one task").wait_for()
    dialog = open_markdown(page, "preview")
    assert dialog.locator("th").all_inner_texts() == ["item_id", "n_images", "question", "answer"]
    assert dialog.locator("tbody tr").count() == 8
    assert "How many" in dialog.inner_text() or "Which" in dialog.inner_text() or "Among" in dialog.inner_text()
    shoot(page, tmp_path, "eval_items-preview")
    dialog.get_by_role("button", name="Close").click()
    page.goto(f"{base}/assets/eval_items?view=checks", wait_until="networkidle")
    for check in ("answers_rederived", "answer_balance"):
        visible_text(page, check).first.wait_for()
    assert page.get_by_text("Succeeded").filter(visible=True).count() >= 2
    page.get_by_text("This is a blocking asset check.").wait_for()
    shoot(page, tmp_path, "eval_items-checks")
