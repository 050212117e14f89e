"""`mimic demo`: materialize every asset of the pipeline through Dagster, in dependency order.

Each (asset, partition) is its own run in the instance at `$DAGSTER_HOME`, so the demo's runs, logs,
metadata and check results are all in the Dagster UI afterwards. Partitioned assets run the
partitions the embedded default needs: the `shapes` source, plus any real source configured.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from collections.abc import Callable

import dagster as dg

from .partitions import source_partitions
from .resources import AnnotationSources


@dataclass(frozen=True)
class DemoStep:
    asset_key: dg.AssetKey
    partition_key: str | dg.MultiPartitionKey | None


DEMO_CHECKPOINTS = ("base", "full_ft", "lora", "lora_masked")  # what the demo's training steps register


def demo_steps(defs: dg.Definitions, checkpoints: tuple[str, ...] = DEMO_CHECKPOINTS) -> list[DemoStep]:
    """Every asset in topological order, with the partitions the demo materializes; per-checkpoint
    assets for the checkpoints the demo trains (their partitions exist by the time those steps run)."""
    graph = defs.resolve_asset_graph()
    sources: AnnotationSources = defs.resources["sources"]
    per_checkpoint = {k for k in graph.get_all_asset_keys() if isinstance(
        graph.get(k).partitions_def, (dg.MultiPartitionsDefinition, dg.DynamicPartitionsDefinition))}  # fmt: skip
    # they and what reads them run after training: their partitions appear only when the checkpoints do
    late = per_checkpoint | {d for k in per_checkpoint for d in graph.get(k).child_keys}
    order = [k for k in graph.toposorted_asset_keys if k not in late] + [k for k in graph.toposorted_asset_keys if k in late]
    steps = []
    for key in order:
        pdef = graph.get(key).partitions_def
        if pdef is None:
            steps.append(DemoStep(key, None))
        elif isinstance(pdef, dg.MultiPartitionsDefinition):  # checkpoint x task
            tasks = next(d.partitions_def for d in pdef.partitions_defs if d.name == "task").get_partition_keys()
            steps.extend(DemoStep(key, dg.MultiPartitionKey({"checkpoint": c, "task": t})) for c in checkpoints for t in tasks)
        elif isinstance(pdef, dg.DynamicPartitionsDefinition):  # checkpoint
            steps.extend(DemoStep(key, c) for c in checkpoints)
        elif pdef == source_partitions:
            steps.extend(DemoStep(key, s) for s in pdef.get_partition_keys() if sources.configured(s))
        else:
            steps.extend(DemoStep(key, p) for p in pdef.get_partition_keys())
    return steps


STALE_STATUSES = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_stale_demo_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = print) -> list[str]:
    """Fail the demo runs whose process is gone (killed mid-run) and free their concurrency slots.

    A run killed with SIGKILL keeps its slot in the `duckdb` pool (limit 1), and every later writer
    would wait for it forever. Only runs this CLI started (tag `mimic/pid`) are touched; runs the
    daemon launched are the daemon's run monitoring's business.
    """
    released = []
    for run in instance.get_runs(dg.RunsFilter(statuses=list(STALE_STATUSES), tags={"mimic/demo": "true"})):
        pid = run.tags.get("mimic/pid")
        if pid and pid.isdigit() and not _alive(int(pid)):
            instance.report_run_failed(run, f"process {pid} running it is gone (killed); marked failed by mimic demo")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            released.append(run.run_id)
            log(f"released run {run.run_id} left behind by a killed process ({pid})")
    return released


def run_demo(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> list[tuple[DemoStep, float]]:
    """Materialize each step; stops at the first failure with the step named. Returns step timings."""
    release_stale_demo_runs(instance, log)
    assets = list(defs.assets)
    timings = []
    steps = demo_steps(defs)
    for n, step in enumerate(steps, start=1):
        label = step.asset_key.to_user_string() + (f"[{step.partition_key}]" if step.partition_key else "")
        log(f"[{n}/{len(steps)}] materializing {label} ...")
        started = time.perf_counter()
        ops_config = {k: v for k, v in (run_config or {}).get("ops", {}).items() if k == step.asset_key.path[-1]}
        # Progress lines (INFO) on the console; Dagster's DEBUG event stream stays in the UI.
        step_config = {"ops": ops_config, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
        result = dg.materialize(
            assets, selection=[step.asset_key], partition_key=step.partition_key, instance=instance,
            resources=defs.resources, run_config=step_config,
            tags={"mimic/demo": "true", "mimic/pid": str(os.getpid())}, raise_on_error=False,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if not result.success:
            errors = [e.event_specific_data.error.message.strip() for e in result.all_events if e.is_step_failure]
            raise RuntimeError(f"{label} failed (run {result.run_id}):\n" + "\n".join(errors))
        failed_checks = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        if failed_checks:
            raise RuntimeError(f"{label}: blocking checks failed: {', '.join(failed_checks)} (run {result.run_id})")
        log(f"      done in {elapsed:.1f}s (run {result.run_id})")
        timings.append((step, elapsed))
    return timings
