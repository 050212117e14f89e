"""Training as an external job: the `accelerate launch ... mimic train` command, and its Dagster Pipes side.

A training asset configured with `launcher: pipes` does not train in its own process: it starts
this command through a Dagster Pipes client (`PipesSubprocessClient` here, `PipesK8sClient` on a
cluster). The job is the ordinary command line (`mimic train`, i.e. `run_recipe`), under
`accelerate launch` with N processes. When it finds itself started by Pipes, its main process opens
the Pipes channel (`dagster_pipes`, Dagster's dependency-free protocol package; no `dagster`
import here), streams progress as log lines, and reports the checkpoint's metadata
(core/training/summary.py) as the asset's materialization. The other processes stay silent. An
exception in the main process is sent back through the channel, so the asset fails with it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mimic_pipeline

from .summary import checkpoint_summary

PACKAGE_ROOT = Path(mimic_pipeline.__file__).resolve().parent.parent


def train_argv(recipe: str, out: Path, single: list[Path], multi: list[Path], base: Path | None,
               steps_scale: float, overrides_json: str, heldout: int) -> list[str]:  # fmt: skip
    """`mimic train` arguments for one recipe (the same inputs the in-process asset passes to run_recipe)."""
    argv = ["train", "--recipe", recipe, "--out", str(out), "--steps-scale", repr(steps_scale), "--heldout", str(heldout)]
    if base is not None:
        argv += ["--base", str(base)]
    argv += ["--single-image", *map(str, single)] if single else []
    argv += ["--train", *map(str, multi)] if multi else []
    return argv + (["--overrides", overrides_json] if overrides_json else [])


def accelerate_command(argv: list[str], processes: int, python: str = sys.executable, port: int | None = None) -> list[str]:
    """`python -m accelerate.commands.launch ... -m mimic_pipeline.cli <argv>` with `processes` processes.

    More than one process is a data-parallel group (`--multi_gpu`: NCCL on GPUs, gloo on a CPU).
    `port` is the group's rendezvous port: give a free one when several jobs share a machine.
    """
    if processes < 1:
        raise ValueError(f"processes={processes}: give 1 or more")
    cmd = [python, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    if processes > 1:
        cmd += ["--multi_gpu", "--main_process_port", str(port or free_port())]
    return cmd + ["-m", "mimic_pipeline.cli", *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """Environment the job needs on top of its own: import this very `mimic_pipeline` (a worktree or
    an editable checkout, not whatever else is installed; on a cluster the image's own, same path)."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def throttled_progress(log: Callable[[str], None], label: str, every_s: float = 10.0) -> Callable[[str, int, int, float], None]:
    """A `progress(stage, step, total, loss)` callback that logs a line at most every `every_s` seconds and at the end."""
    last = {"t": 0.0}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or now - last["t"] > every_s:
            last["t"] = now
            log(f"{label} {stage}: step {step}/{total}, loss {loss:.4f}")

    return progress


class PipesTraining:
    """The main process's end of a Pipes-launched training job."""

    def __init__(self, pipes, recipe: str):
        self.pipes, self.recipe = pipes, recipe

    @property
    def names(self) -> tuple[list[str], list[str]] | None:
        """Leaf categories and parents for a model built from scratch (the asset reads them from the catalogue)."""
        names = self.pipes.extras.get("categories")
        return None if names is None else (list(names[0]), list(names[1]))

    @property
    def lineage(self) -> dict:
        return {"dagster_run_id": self.pipes.run_id}

    def progress(self, label: str) -> Callable[[str, int, int, float], None]:
        return throttled_progress(self.pipes.log.info, label)

    def report(self, folder: Path) -> None:
        summary = checkpoint_summary(folder, self.recipe)
        metadata = {k: {"raw_value": v, "type": kind} for k, (kind, v) in summary.metadata.items()}
        self.pipes.report_asset_materialization(metadata=metadata, data_version=summary.data_version)


ERROR_GRACE_S = 10.0  # how long another process waits before exiting on an error (see pipes_training)


def _is_main_process() -> bool:
    """Rank 0 of an `accelerate launch` / torchrun group (or a plain process); read before any group exists."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def pipes_training(recipe: str) -> Iterator[PipesTraining | None]:
    """Open Dagster Pipes in the main process when this process was started by a Pipes client; else None.

    An exception raised inside the block is reported through the channel before it propagates. The
    launcher stops every process as soon as one exits with an error; so that an error every process
    meets (a bad recipe field, a missing file) reaches Dagster from the main process rather than
    being cut short there, the other processes wait `ERROR_GRACE_S` before exiting with theirs.
    """
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield None
        return
    if not _is_main_process():
        try:
            yield None
        except BaseException:
            time.sleep(ERROR_GRACE_S)
            raise
        return
    with open_dagster_pipes() as pipes:
        pipes.log.info(f"mimic train {recipe}: {os.environ.get('WORLD_SIZE', '1')} process(es), pid {os.getpid()}")
        yield PipesTraining(pipes, recipe)
