"""What a user sees in TensorBoard when one logs directory holds runs of several families:
the HPARAMS table (read through TensorBoard's own hparams plugin), its columns, the
learning-rate curves and the steps the image grids are logged at."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from genmodels.jobs.train import train
from genmodels.sampling import interleave_rows

from .conftest import FAST, compose_config, run_main

TINY = [*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


@pytest.fixture(scope="module")
def mixed_logdir(tmp_path_factory) -> Path:
    """`logs/` with a VAE run (tested) and a DCGAN run (test=false), as a user makes them."""
    logs = tmp_path_factory.mktemp("logs")
    for name, args in {"vae": ["model=vae"], "dcgan": ["model=dcgan", "test=false"]}.items():
        train(compose_config([*args, *TINY], logs / "runs" / name))
    return logs


def hparams_table(logdir: Path) -> dict[str, dict]:
    """The HPARAMS table TensorBoard's server sends its page for `tensorboard --logdir`:
    {session run: {"hparams": {...}, "metrics": {...}}}, through the plugin's HTTP routes."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    context = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=multiplexer,
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)))
    routes = hparams_plugin.HParamsPlugin(context).get_plugin_apps()

    def ask(route: str, request: dict) -> dict:
        reply = Client(routes[route], Response).post("/", json=request)
        assert reply.status_code == 200, reply.get_data()
        return json.loads(reply.get_data())

    experiment = ask("/experiment", {"experimentName": ""})
    columns = ([{"hparam": h["name"], "includeInResult": True}
                for h in experiment["hparamInfos"]]
               + [{"metric": m["name"], "includeInResult": True}
                  for m in experiment["metricInfos"]])
    groups = ask("/session_groups", {"experimentName": "", "colParams": columns,
                                     "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN"],
                                     "startIndex": 0, "sliceSize": 100})["sessionGroups"]
    return {session["name"]: {"hparams": group["hparams"],
                              "metrics": {m["name"]["tag"]: m["value"]
                                          for m in session["metricValues"]}}
            for group in groups for session in group["sessions"]}


def test_hparams_table_shows_every_family_with_its_own_metrics(mixed_logdir):
    table = hparams_table(mixed_logdir)
    rows = {row["hparams"]["model"]: row for row in table.values()}
    assert set(rows) == {"vae", "dcgan"}, table.keys()
    vae, gan = rows["vae"]["metrics"], rows["dcgan"]["metrics"]
    assert {"hp/val/elbo", "hp/val/loss", "hp/test/elbo"} <= set(vae), vae
    assert {"hp/val/d_loss", "hp/val/g_loss"} <= set(gan), gan
    assert not any(name.startswith("hp/test/") for name in gan)  # test=false: none


def test_hparams_are_a_short_flat_curated_set(mixed_logdir):
    table = hparams_table(mixed_logdir)
    for row in table.values():
        hparams = row["hparams"]
        for key in ("model", "dataset", "dataset.batch_size", "trainer.precision",
                    "trainer.devices", "seed"):
            assert key in hparams, (key, sorted(hparams))
        assert not any("_target_" in key or "_partial_" in key or "paths" in key
                       for key in hparams), sorted(hparams)
        assert not any(str(value).startswith("/") for value in hparams.values()), hparams
        assert len(hparams) < 60, sorted(hparams)  # the whole config gave ~100
    vae = next(r["hparams"] for r in table.values() if r["hparams"]["model"] == "vae")
    assert vae["model.optimizer"] == "RMSprop" and vae["model.optimizer.lr"] == 1e-3
    assert vae["model.latent_dim"] == 10 and "model.decoder.latent_dim" not in vae  # a copy
    gan = next(r["hparams"] for r in table.values() if r["hparams"]["model"] == "dcgan")
    assert {"model.g_optimizer.lr", "model.d_optimizer.lr"} <= set(gan)
    # The same set lands in the logger's hparams.yaml.
    saved = yaml.safe_load((mixed_logdir / "runs" / "vae" / "tensorboard" / "hparams.yaml")
                           .read_text())
    assert saved == vae


def session_starts(session_dir: Path) -> list[dict]:
    """The hyperparameters of every HPARAMS session started in `session_dir`'s event files
    (TensorBoard's `_hparams_/session_start_info` summaries), whichever row it shows."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    starts = []
    for path in sorted(session_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(
                        value.metadata.plugin_data.content)
                    starts.append({name: getattr(v, v.WhichOneof("kind"))
                                   for name, v in info.hparams.items()})
    return starts


def test_a_resumed_run_is_one_hparams_row_with_its_new_max_epochs_and_final_metrics(tmp_path):
    """`python train.py resume=<run> trainer.max_epochs=2` (docs/usage.md) after a 1-epoch
    run: the run's HPARAMS session is replaced, not added to; a second session in the same
    directory kept the first one's max_epochs in the row TensorBoard shows."""
    run_dir = tmp_path / "runs" / "vae"
    train(compose_config(["model=vae", *TINY, "trainer.max_epochs=1",
                          "callbacks.image_grids=null"], run_dir))
    logged = sorted(p.name for p in (run_dir / "tensorboard").glob("events.*"))
    run_main(f"resume={run_dir}", "trainer.max_epochs=2")
    (start,) = session_starts(run_dir / "tensorboard" / "hparams")
    assert start["trainer.max_epochs"] == 2
    (row,) = hparams_table(tmp_path).values()
    assert row["hparams"]["trainer.max_epochs"] == 2
    # The final metrics are the resumed run's, as its summary.json has them.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert row["metrics"] == pytest.approx({f"hp/{name}": value
                                            for name, value in summary["metrics"].items()
                                            if name.startswith(("val/", "test/"))})
    # The training curves of both runs are kept: only the session was replaced.
    assert set(logged) < {p.name for p in (run_dir / "tensorboard").glob("events.*")}


def scalars_and_images(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return events


def test_learning_rates_are_named_lr_or_lr_slash_network(mixed_logdir):
    vae = scalars_and_images(mixed_logdir / "runs" / "vae").Tags()["scalars"]
    gan = scalars_and_images(mixed_logdir / "runs" / "dcgan").Tags()["scalars"]
    assert [t for t in vae if t.startswith("lr")] == ["lr"], vae
    assert sorted(t for t in gan if t.startswith("lr")) == ["lr/discriminator",
                                                           "lr/generator"], gan


def test_image_grids_are_logged_at_the_step_of_the_scalars(mixed_logdir):
    """A GAN's global_step counts both players' steps: the grids must still line up with
    the validation curves (two epochs of two batches, validated after batches 2 and 4:
    Lightning logs them at steps 1 and 3), and their PNG files keep the epoch in the name."""
    run = mixed_logdir / "runs" / "dcgan"
    events = scalars_and_images(run)
    val_steps = [event.step for event in events.Scalars("val/g_loss")]
    assert val_steps == [1, 3]
    assert [event.step for event in events.Images("samples")] == val_steps
    assert sorted(p.name for p in (run / "images").glob("samples_*.png")) == [
        "samples_epoch0000.png", "samples_epoch0001.png"]


def test_interleave_rows_puts_each_row_of_inputs_over_its_outputs():
    inputs = torch.arange(16.0).view(16, 1, 1, 1)
    pairs = torch.stack([inputs, -inputs], dim=1)
    order = interleave_rows(pairs, row_length=8).flatten().tolist()
    assert order[:8] == list(range(8)) and order[8:16] == [-v for v in range(8)]
    assert order[16:24] == list(range(8, 16))
