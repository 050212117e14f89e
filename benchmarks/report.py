"""What the benchmark scripts share: peak memory of this process, result tables, synthetic class ids."""

from __future__ import annotations

import numpy as np


def peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM) in KiB.

    Not `getrusage(...).ru_maxrss`: Linux carries the parent's high-water mark into a child across
    fork/exec, so every child would report at least the benchmark parent's own footprint (which
    holds the generated inputs), and RUSAGE_CHILDREN in the parent inherits the same error.
    """
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def plain_table(columns: list[str], rows: list[list[str]], right_aligned: set[str]) -> str:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]

    def line(cells):
        return "  ".join(
            cell.rjust(w) if col in right_aligned else cell.ljust(w) for col, cell, w in zip(columns, cells, widths)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def markdown_table(columns: list[str], rows: list[list[str]], right_aligned: set[str]) -> str:
    rule = ["---:" if c in right_aligned else "---" for c in columns]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in [columns, rule, *rows])


def freebase_ids(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct OpenImages-style (Freebase) class ids such as /m/0k4j2."""
    alphabet = np.array(list("0123456789bcdfghjklmnpqrstvwxyz_"))
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids.setdefault("/m/0" + "".join(rng.choice(alphabet, size=int(rng.integers(4, 7)))))
    return list(ids)
