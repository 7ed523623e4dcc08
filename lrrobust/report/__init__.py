"""Table 9 style reports (paper Sec. 6.2) from evaluation and training run directories.

``write_report(dirs, out)`` writes into ``out``: ``table9.md``, ``table9.csv``, ``table9_attacks.csv``,
``table9_tests.csv``, the plots and ``manifest.json``: all written into a staging folder first, then renamed into
place, so a failure while writing leaves the previous report whole. Modules: ``collect`` (the inputs),
``table9`` (columns, cells, paired tests), ``claims`` (the paper's claims), ``tables`` (the DataFrames behind the
CSVs and the markdown tables), ``plots``, ``sections`` (the evidence below the first screen, the manifest) and
``render`` (table9.md). docs/reports.md describes the files and every CSV column.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lrrobust.errors import UserError
from lrrobust.io import atomic_write_json, atomic_write_text
from lrrobust.report.collect import Entry, collect, network_name
from lrrobust.report.plots import PLOT_FILES, write_plots
from lrrobust.report.render import render_markdown
from lrrobust.report.sections import manifest
from lrrobust.report.table9 import COLUMNS, check_matching, comparisons, paper_table9, table_rows
from lrrobust.report.tables import (
    TEST_COLS,
    attack_cols,
    attack_rows,
    frame,
    table9_cols,
    table9_frame,
    test_rows,
    to_csv,
)


def write_report(dirs: list[str | os.PathLike], out: str | os.PathLike, allow_mixed: bool = False,
                 extra_sections: list[str] | None = None) -> Path:
    """Write the report into ``out``; returns the markdown's path. Inputs are checked before anything is written."""
    entries = collect(dirs)
    if not entries:
        raise UserError("nothing to report: no evaluation or training run found")
    odd = check_matching(entries, allow_mixed)
    rows = table_rows(entries, odd)
    tests = comparisons(rows)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:  # every file is written first; a failure (a full disk) leaves the previous report as it was
        plots = write_plots(entries, staging)
        atomic_write_text(staging / "table9.csv", to_csv(table9_frame(rows, entries), table9_cols(rows)))
        attacks = attack_rows(entries)
        atomic_write_text(staging / "table9_attacks.csv", to_csv(frame(attacks, attack_cols(attacks)),
                                                                 attack_cols(attacks)))
        atomic_write_text(staging / "table9_tests.csv", to_csv(frame(test_rows(tests), TEST_COLS), TEST_COLS))
        atomic_write_json(staging / "manifest.json", manifest(entries))
        atomic_write_text(staging / "table9.md", render_markdown(entries, rows, tests, plots, extra_sections))
        for axis, name in PLOT_FILES.items():  # a plot the new report does not have must not linger beside it
            if plots.get(axis) is None:
                (out / name).unlink(missing_ok=True)
        for path in sorted(staging.iterdir(), key=lambda p: p.name == "table9.md"):  # the markdown last
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "table9.md"


__all__ = ["COLUMNS", "Entry", "collect", "network_name", "paper_table9", "table_rows", "write_report"]
