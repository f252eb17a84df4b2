"""The sweep-level summary table, written by Hydra at the end of every multirun."""

import csv
import io
import json
import logging
import math
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from genmodels.errors import GenmodelsError, TrainingDiverged
from genmodels.files import write_text_atomically

log = logging.getLogger(__name__)

# Metrics where a higher value is better; every other optimized metric is a loss or a
# distance (val/loss, val/fd_classifier, ...), where lower is better.
HIGHER_IS_BETTER = ("elbo", "acc", "precision", "recall", "density", "coverage",
                    "modes_covered", "is_inception")


def record_failed_job(error: BaseException) -> None:
    """Note in a sweep job's `summary.json` that it failed, and why (one line), so the
    sweep table lists it. A diverged run stays `diverged`; a run that trained and then
    failed (its optimized metric was never logged, say) becomes `failed`, not `ok`."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    summary_file = job_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if summary.get("status") != "diverged":
        summary["status"] = "failed"
    summary.setdefault("overrides", list(hydra.overrides.task))
    summary["error"] = (str(error).strip().splitlines() or [type(error).__name__])[0]
    write_text_atomically(summary_file, json.dumps(summary, indent=2) + "\n")


class SearchStopped(BaseException):
    """A search stops: a trial was refused before its first training step (a missing
    dataset, a bad config key or value), since its other trials would be refused alike,
    instead of recording the same failure n_trials times; or its last trial ended with none
    completed. A BaseException, so that Hydra's job runner and the sweeper, which catch
    Exception to record a failed trial and go on, let it through to train.py, which prints
    its message (and logs `why` it stopped at `job`)."""

    def __init__(self, message: str, job: str,
                 why: str = "refused before training: a problem with the data or the "
                            "config, which its next trials would meet too"):
        super().__init__(message, job, why)  # all, so that it crosses joblib's processes
        self.message, self.job, self.why = message, job, why

    def __str__(self) -> str:
        return self.message


def search_stop(error: BaseException, trained: bool) -> SearchStopped | None:
    """What stops a sweep after this job's failure, if anything: in a search, whose sweeper
    draws its trials (Optuna; not Hydra's basic sweeper, whose jobs are each given on the
    command line and all run), a refusal (GenmodelsError) before the job's first training
    step. A diverged run is a result of its trial's values: the search goes on."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    if (not isinstance(error, GenmodelsError) or isinstance(error, TrainingDiverged) or trained
            or str(hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper")):
        return None
    return SearchStopped(str(error), Path(hydra.runtime.output_dir).name)


def search_ended_without_a_result() -> SearchStopped | None:
    """After a trial that failed or diverged: if it was a search's last (Optuna's n_trials),
    the others are done and none completed, Optuna has no best trial and would end with its
    own "ValueError: No trials are completed yet." and a traceback. A stop in one sentence
    instead (the sweep's tables are written as for any stop)."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    n_trials = hydra.sweeper.get("n_trials")
    if not isinstance(n_trials, int) or int(hydra.job.num) != n_trials - 1:
        return None
    finished = [row for row in collect_jobs(Path(hydra.sweep.dir))
                if (Path(hydra.sweep.dir) / row["job"] / "summary.json").is_file()]
    if len(finished) < n_trials or any(row["status"] == "ok" for row in finished):
        return None  # a trial still running (parallel jobs) may yet complete
    return SearchStopped(
        f"None of the search's {n_trials} trials completed (each failed or diverged, for the "
        "reasons in the sweep's table), so Optuna has no best trial to report.",
        Path(hydra.runtime.output_dir).name, why="its last trial, none of them completed")


def metric_unit(metric: str, model: dict) -> str | None:
    """The unit of a logged metric for the model family that logged it, so that a table
    never puts, say, a per-pixel cross-entropy and nats per image in one column."""
    family = str(model.get("_target_", "")).rsplit(".", 1)[-1]
    name = metric.split("/", 1)[-1]
    if family == "VAE":
        # recon, kl and elbo are always in nats per image (docs/models.md, "Variational
        # autoencoders"); the loss is the weighted training objective.
        return {"recon": "nats/image", "kl": "nats/image", "elbo": "nats/image",
                "loss": "VAE objective"}.get(name)
    if family.endswith("AutoEncoder"):
        per_pixel = f"{str(model.get('loss', 'bce')).upper()}/pixel"
        if name == "recon" or (name == "loss" and family in ("AutoEncoder",
                                                              "DenoisingAutoEncoder")):
            return per_pixel
        return "objective" if name == "loss" else None
    if family == "GAN" and name in ("d_loss", "g_loss"):
        return f"{model.get('loss', 'non_saturating')} loss"
    return None


def read_job(job_dir: Path) -> dict | None:
    """One job's row: overrides, status, the one-line reason of a failure, its final
    metrics keyed by `metric [unit]`. None for a folder that is not a job."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    summary_file = job_dir / "summary.json"
    if not (overrides_file.is_file() or summary_file.is_file()):
        return None
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    overrides = (list(OmegaConf.load(overrides_file)) if overrides_file.is_file()
                 else summary.get("overrides", []))
    row = {"job": job_dir.name, "overrides": overrides, "metrics": {}}
    if not summary:
        row |= {"status": "failed",
                "error": "stopped before writing summary.json (see the job's log)"}
        return row
    metrics = summary.get("metrics", {})
    finite = all(v is not None for v in metrics.values())
    row["status"] = summary.get("status") or ("ok" if finite else "diverged")
    if summary.get("error"):
        row["error"] = summary["error"]
    config_file = job_dir / "config.yaml"
    model = OmegaConf.to_container(OmegaConf.load(config_file)).get("model", {}) \
        if config_file.is_file() else {}
    for name, value in metrics.items():
        # val/..., test/..., and a pretraining run's phases: autoencoder/val/..., ...
        if {"val", "test"} & set(name.split("/")[:-1]):
            unit = metric_unit(name, model)
            row["metrics"][f"{name} [{unit}]" if unit else name] = value
    return row


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job directory of a sweep, in job order. A job without summary.json
    failed (or was stopped) during training."""
    rows = [row for job_dir in sorted(sweep_dir.iterdir(), key=job_number)
            if job_dir.is_dir() and (row := read_job(job_dir)) is not None]
    # One column per swept parameter: the keys whose value is not the same in every job.
    values = [{override_key(o): o.split("=", 1)[-1] for o in row["overrides"]} for row in rows]
    keys = list(dict.fromkeys(key for job in values for key in job))
    swept = [k for k in keys if len({job.get(k) for job in values}) > 1]
    for row, job in zip(rows, values, strict=True):
        row["parameters"] = {key: job.get(key, "") for key in swept}
    return rows


def job_number(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, path.name)


def best_job(rows: list[dict], metric: str | None,
             direction: str | None) -> tuple[str | None, str]:
    """The job with the best `metric` among those that finished, and a note saying how it
    was chosen (or why none is marked: the metric's values are in different units)."""
    if not metric:
        return None, ""
    columns = {c for row in rows for c in row["metrics"] if c.split(" [")[0] == metric}
    if len(columns) > 1:
        return None, (f"No best job marked: {metric} is in different units across the jobs "
                      f"({', '.join(sorted(columns))}).")
    scored = [(row["metrics"][c], row["job"]) for row in rows if row["status"] == "ok"
              for c in columns if isinstance(row["metrics"].get(c), float | int)
              and math.isfinite(row["metrics"][c])]
    if not scored:
        return None, f"No best job marked: no job finished with a value of {metric}."
    if direction is None:
        direction = "maximize" if any(k in metric for k in HIGHER_IS_BETTER) else "minimize"
    best = (max if direction == "maximize" else min)(scored)[1]
    return best, f"best: {best} ({'highest' if direction == 'maximize' else 'lowest'} {metric})"


def write_tables(rows: list[dict], sweep_dir: Path, metric: str | None = None,
                 direction: str | None = None) -> None:
    best, note = best_job(rows, metric, direction)
    parameters = list(dict.fromkeys(k for row in rows for k in row["parameters"]))
    metrics = sorted({k for row in rows for k in row["metrics"]})
    columns = ["job", "status", *(["best"] if metric else []), *parameters, *metrics]
    if any(row.get("error") for row in rows):
        columns.append("error")
    table = [{"job": row["job"], "status": row["status"],
              "best": "*" if row["job"] == best else "", "error": row.get("error", ""),
              **row["parameters"], **row["metrics"]} for row in rows]
    csv_text = io.StringIO(newline="")
    writer = csv.DictWriter(csv_text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    write_text_atomically(sweep_dir / "sweep_summary.csv", csv_text.getvalue())

    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value if value is not None
                                                                   else "")
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in table]
    if note:
        lines += ["", note]
    write_text_atomically(sweep_dir / "sweep_summary.md", "\n".join(lines) + "\n")


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): after a multirun, `sweep_summary.csv` and
    `sweep_summary.md` in the sweep directory list every job with one column per swept
    parameter, its status (ok, diverged, failed, with the reason of a failure) and its
    final validation/test metrics, each column in one unit (named in its header); with
    `optimized_metric` set, the best job is marked. If a job failed, the sweep then exits
    with status 1 and a one-line message. A sweep that ends early (a search stopped by a
    refused trial, an Optuna search without a completed trial, Ctrl-C), for which Hydra
    skips on_multirun_end, gets its tables from `finish_unfinished_sweep` (train.py)."""

    # The config of the multirun under way in this process, until its tables are written.
    unfinished: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SweepSummary.unfinished = config

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        SweepSummary.unfinished = None
        rows = summarize_sweep(config)
        failed = [row for row in rows if row["status"] == "failed"]
        if failed:
            first = failed[0]
            sys.exit(f"Error: {len(failed)} of {len(rows)} jobs failed ({first['job']}: "
                     f"{first.get('error', '')}); see "
                     f"{Path(config.hydra.sweep.dir) / 'sweep_summary.md'}.")


def summarize_sweep(config: DictConfig, if_empty: bool = True) -> list[dict]:
    """Write the sweep's tables (sweep_summary.csv and .md), also for a sweep without jobs
    unless `if_empty` is false; return its rows."""
    sweep_dir = Path(config.hydra.sweep.dir)
    if not sweep_dir.is_dir():  # e.g. a SLURM sweep whose jobs have not started
        return []
    rows = collect_jobs(sweep_dir)
    if not (rows or if_empty):
        return rows
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    write_tables(rows, sweep_dir, config.get("optimized_metric"),
                 direction if isinstance(direction, str) else None)
    statuses = [row["status"] for row in rows]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    log.info("Sweep summary (%d jobs%s): %s", len(rows), f": {counts}" if counts else "",
             sweep_dir / "sweep_summary.md")
    return rows


def finish_unfinished_sweep() -> None:
    """The tables of a multirun of this process that ended without Hydra's end-of-sweep
    callbacks (the sweeper or a job raised): written all the same, from the jobs that
    ran. Nothing for a sweep that ended normally or ran no job, or for a single run."""
    config, SweepSummary.unfinished = SweepSummary.unfinished, None
    if config is not None:
        summarize_sweep(config, if_empty=False)
