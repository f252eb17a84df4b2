"""The sweep-level summary table, written by Hydra at the end of every multirun."""

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job directory: its overrides, status and final metrics (summary.json).
    A job without summary.json failed or is still running."""
    rows = []
    for job_dir in sorted(sweep_dir.iterdir(), key=job_number):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        row = {"job": job_dir.name,
               "overrides": " ".join(OmegaConf.load(overrides_file)), "status": "failed"}
        summary_file = job_dir / "summary.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            metrics = summary["metrics"]
            finite = all(v is not None for v in metrics.values())
            row["status"] = "ok" if finite else "diverged"
            row |= {k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))}
        rows.append(row)
    # Show what differs between the jobs, not the arguments they all share.
    shared = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    for row in rows:
        row["overrides"] = " ".join(o for o in row["overrides"].split() if o not in shared)
    return rows


def job_number(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def write_tables(rows: list[dict], sweep_dir: Path) -> None:
    columns = ["job", "status", "overrides"]
    columns += sorted({k for row in rows for k in row} - set(columns))
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value if value is not None
                                                                  else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): after a multirun, `sweep_summary.csv` and
    `sweep_summary.md` in the sweep directory list every job with its overrides, status
    (ok, diverged, failed) and final validation/test metrics."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():  # e.g. a SLURM sweep whose jobs have not started
            return
        rows = collect_jobs(sweep_dir)
        write_tables(rows, sweep_dir)
        log.info("Sweep summary (%d jobs): %s", len(rows), sweep_dir / "sweep_summary.md")
