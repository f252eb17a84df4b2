"""The benchmark (benchmarks/bench.py): its bare loop does the module's math, and bad input
gets one sentence (issues 10, 11, 13)."""

import argparse
import json

import lightning as L
import pytest
import torch
import yaml

from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.errors import GenmodelsError

from .conftest import CONF, SMALL_DDPM, compose_config, import_benchmark
from .test_gans import VARIANTS

bench = import_benchmark("bench")
GAN_CONFIGS = sorted(p.stem for p in (CONF / "model").glob("*.yaml")
                     if yaml.safe_load(p.read_text()).get("_target_") == "genmodels.models.GAN")
# Options on top of each config's own, so that every GAN option runs in some config.
EXTRA = {"gan": ["+model.d_steps=2", "+model.replay_capacity=24", "+model.ema_decay=0.5"],
         "gan_upsample": ["+model.replay_capacity=8", "+model.penalty=gradient_penalty"],
         "cgan": ["+model.joint_d_batch=true", "+model.eval_generator_for_d=true"]}


class ReseedAndRecord(L.Callback):
    """Seeds the global RNG before every batch and keeps the (scaled) batch, so the bare
    loop can replay the same batches with the same random draws."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        torch.manual_seed(1000 + batch_idx)
        self.batches.append(tuple(t.clone() for t in batch))


def test_every_gan_config_has_a_tiny_variant():
    assert set(GAN_CONFIGS) == set(VARIANTS), "add the new GAN config to test_gans.VARIANTS"


@pytest.mark.parametrize("name", GAN_CONFIGS)
def test_bare_gan_loop_ends_with_the_framework_weights(name, tmp_path):
    cfg = compose_config(["dataset=digits", "dataset.batch_size=8", f"model={name}",
                          *VARIANTS[name], *EXTRA.get(name, [])], tmp_path)
    torch.manual_seed(0)
    framework_gan = build(cfg.model)
    torch.manual_seed(0)
    bare_gan = build(cfg.model)
    recorder = ReseedAndRecord()
    batches = 6 if framework_gan.growth is None else 10  # ProGAN: through a fade-in
    trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                        logger=False, callbacks=[*essential_callbacks(), recorder],
                        enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", precision=cfg.trainer.precision)
    trainer.fit(framework_gan, build(cfg.dataset))

    step = bench.bare_step(bare_gan.train(), cfg.trainer.precision)
    for i, (images, labels) in enumerate(recorder.batches):
        torch.manual_seed(1000 + i)
        step(images, labels)

    assert len(recorder.batches) == batches
    expected, actual = framework_gan.state_dict(), bare_gan.state_dict()
    assert expected.keys() == actual.keys()
    differing = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not differing, differing
    assert framework_gan.discriminator_steps == step.d_steps_taken == batches
    if framework_gan.replay is not None:
        filled = framework_gan.replay.filled
        assert filled == bare_gan.replay.filled > 0
        assert torch.equal(framework_gan.replay.images[:filled], bare_gan.replay.images[:filled])


def test_bare_ddpm_loop_ends_with_the_framework_weights_and_their_ema(tmp_path):
    """The bare loop's DDPM step is the module's: the same weights after the same batches
    and draws, and the same EMA, whose warm-up counts the bare loop's own steps."""
    cfg = compose_config(["dataset=digits", "dataset.batch_size=8", "model=ddpm", *SMALL_DDPM,
                          "model.ema_decay=0.99"], tmp_path)
    torch.manual_seed(0)
    framework_ddpm = build(cfg.model)
    torch.manual_seed(0)
    bare_ddpm = build(cfg.model)
    recorder = ReseedAndRecord()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=0,
                        logger=False, callbacks=[*essential_callbacks(), recorder],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(framework_ddpm, build(cfg.dataset))

    step = bench.bare_step(bare_ddpm.train(), cfg.trainer.precision)
    for i, (images, labels) in enumerate(recorder.batches):
        torch.manual_seed(1000 + i)
        step(images, labels)

    expected, actual = framework_ddpm.state_dict(), bare_ddpm.state_dict()
    assert any(k.startswith("network_ema.") for k in expected)
    differing = [k for k in expected if not torch.allclose(expected[k], actual[k], atol=1e-6)]
    assert not differing, differing


def test_bare_loop_refuses_a_precision_it_does_not_reproduce():
    model = build(compose_config(["model=gan", "dataset=digits"]).model)
    with pytest.raises(GenmodelsError, match="16-mixed"):
        bench.bare_step(model, "16-mixed")


@pytest.mark.parametrize("args, message", [
    (["model=vea"], "Unknown config 'model=vea'; valid choices for model: ae, "),
    (["model.no_such_key=1"], "Could not override 'model.no_such_key'"),
])
def test_bench_refuses_bad_overrides_in_one_sentence(args, message):
    with pytest.raises(GenmodelsError, match=message):
        bench.main(args)


@pytest.mark.parametrize("option, value", [("--steps", "-3"), ("--steps", "0"),
                                           ("--warmup", "0"), ("--rounds", "0"),
                                           ("--rounds", "x")])
def test_bench_refuses_counts_below_one(option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main([option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: must be an integer >= 1, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_benchmark_prints_framework_and_bare_loop_speeds(model, capsys):
    result = bench.main([f"model={model}", "trainer=cpu", "trainer.enable_progress_bar=false",
                         "dataset.batch_size=64", "--steps", "6", "--warmup", "2",
                         "--rounds", "1"])
    assert result["framework"] > 0 and result["bare"] > 0
    assert result["ratio"] == pytest.approx(result["framework"] / result["bare"])  # 1 round
    output = capsys.readouterr().out
    assert "framework" in output and "bare PyTorch loop" in output and "ratio" in output


def test_tiny_table_gives_microseconds_per_step_of_the_three_loops(monkeypatch, capsys):
    monkeypatch.setattr(bench, "TINY", {"ae": bench.TINY["ae"]})
    rows = bench.main(["--tiny", "--steps", "4", "--warmup", "1", "--rounds", "1",
                       "trainer=cpu"])
    row = rows["ae"]
    assert row["framework_us"] > 0 and row["bare_us"] > 0 and row["lightning_us"] > 0
    assert row["ratio"] == pytest.approx(row["bare_us"] / row["framework_us"])  # one round
    assert row["lightning_ratio"] == pytest.approx(row["bare_us"] / row["lightning_us"])
    assert "| ae | " in capsys.readouterr().out


def test_gpu_check_runs_its_cells_on_the_cpu_and_writes_json_and_markdown(tmp_path):
    gpu_check = import_benchmark("gpu_check")
    result = gpu_check.main(["--out", str(tmp_path), "--cpu", "--quick"])
    cells = {(row["model"], row["precision"]) for row in result["speed"]}
    assert cells == {(m, p) for m in ("vae", "dcgan") for p in gpu_check.PRECISIONS}
    assert all("error" not in row and row["framework"] > 0 for row in result["speed"])
    assert all(row["ratio"] > 0 for row in result["speed"] if row["precision"] != "16-mixed")
    assert [row["finite"] for row in result["gans"]] == [True]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["device"] == "cpu"
    assert "| dcgan | 8 | 16-mixed |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.parametrize("script, args", [("seed_claims", []), ("compare_keras", ["score"])])
def test_benchmarks_without_the_mnist_files_say_where_they_come_from(script, args, tmp_path,
                                                                    monkeypatch):
    module = import_benchmark(script)
    names = ("t10k-images-idx3-ubyte.gz" if script == "seed_claims" else
             "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    where = (f"give --mnist-dir <folder> with the official MNIST test set "
             f"file{'s' * (script != 'seed_claims')} {names} (gzipped or not), e.g. "
             "data/MNIST/raw, where torchvision's MNIST downloads them (python train.py "
             "dataset=mnist).")
    with pytest.raises(SystemExit) as stop:
        module.main([*args, "--mnist-dir", str(tmp_path / "missing")])
    assert stop.value.code == f"Error: {tmp_path / 'missing'} holds no MNIST test files: {where}"
    # No folder given, and no ../shared beside the repository (users have none).
    monkeypatch.setattr(module, "SHARED", tmp_path / "shared")
    with pytest.raises(SystemExit) as stop:
        module.main(args)
    assert stop.value.code == f"Error: No MNIST folder given (--mnist-dir): {where}"
    # torchvision's download folder (dataset=mnist), gzipped or not, is found.
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").touch()
    (raw / "t10k-labels-idx1-ubyte.gz").touch()
    found = module.mnist_files(tmp_path / "data", {"images": None, "labels": None},
                               module.SHARED)
    assert found == {"images": raw / "t10k-images-idx3-ubyte",
                     "labels": raw / "t10k-labels-idx1-ubyte.gz"}


def test_every_ablation_variant_composes_and_names_its_files(tmp_path):
    """A typo in a variant's overrides would surface only on the GPU machine, after its
    minutes of training had started; here each one composes with its recipe."""
    ablation, compare_keras = import_benchmark("ablation"), import_benchmark("compare_keras")
    jobs = [job for group in ablation.GROUPS for job in ablation.jobs_of(group, None)]
    assert len({(tag, seed) for tag, seed, _ in jobs}) == len(jobs)
    configs = set()
    for tag, _, arguments in jobs:
        assert "_" not in tag  # the score command splits file names at '_'
        recipe = arguments[arguments.index("--recipe") + 1]
        overrides = []
        if "--override" in arguments:
            for argument in arguments[arguments.index("--override") + 1:]:
                if argument.startswith("--"):
                    break
                overrides.append(argument)
        configs.add((recipe, tuple(overrides)))
    for recipe, overrides in configs:
        compose_config([*compare_keras.RECIPES[recipe], *overrides], tmp_path)
    # A DDPM variant slower on the CPU gets fewer steps in the same 20 minutes.
    wide = next(a for tag, _, a in jobs if tag == "ddpm-wide")
    assert wide[wide.index("--steps") + 1] == str(round(ablation.DDPM_STEPS * 0.31))


def test_every_model_config_is_in_the_catalogue_and_trains_for_its_budget(tmp_path):
    """The results page's command (benchmarks/catalogue.py) covers every model config, or
    says why not; each of its configs composes with the split and the time budget."""
    catalogue = import_benchmark("catalogue")
    models = {p.stem for p in (CONF / "model").glob("*.yaml")}
    listed = {overrides[0].removeprefix("model=") for _, overrides in catalogue.CATALOGUE.values()}
    assert models - set(catalogue.SKIPPED) <= listed, "add the new model to the catalogue"
    args = argparse.Namespace(minutes=2.5, images="i.gz", labels="l.gz", accelerator="cpu",
                              seed=3)
    for name in catalogue.CATALOGUE:
        cfg = compose_config(catalogue.train_overrides(name, args, tmp_path / "run"), tmp_path)
        assert cfg.trainer.max_time == "00:00:02:30" and cfg.trainer.max_epochs == -1
        assert (cfg.dataset.images, cfg.dataset.test_fraction, cfg.seed) == ("i.gz", 0.2, 3)


def test_the_catalogue_keeps_one_budget_per_folder_and_writes_only_between_its_markers(
        tmp_path):
    catalogue = import_benchmark("catalogue")
    args = argparse.Namespace(out=str(tmp_path / "out"), minutes=10, seed=0, accelerator="cpu",
                              nll_samples=10)
    catalogue.check_settings(args)
    assert args.command == "python benchmarks/catalogue.py --minutes 10"
    args.minutes = 2
    with pytest.raises(SystemExit) as stop:
        catalogue.check_settings(args)
    assert stop.value.code == (f"Error: {args.out} holds runs made with --minutes 10; give "
                               "the same, or another --out for --minutes 2.")
    page = tmp_path / "results.md"
    page.write_text(f"# Results\nintro\n{catalogue.START}\nold table\n{catalogue.END}\nafter\n")
    catalogue.write_page(page, "new table\n")
    assert page.read_text() == (f"# Results\nintro\n{catalogue.START}\nnew table\n"
                                f"{catalogue.END}\nafter\n")
    page.write_text("# Results\n")
    with pytest.raises(SystemExit, match="has no catalogue markers"):
        catalogue.write_page(page, "new table\n")


@pytest.mark.slow
def test_the_catalogue_trains_scores_and_tabulates_and_keeps_what_it_finished(tmp_path,
                                                                              capsys):
    """benchmarks/catalogue.py end to end on scikit-learn's digits as IDX files: a row of
    numbers on the page; a second command retrains nothing, an interrupted run is redone."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from genmodels.data.datasets import write_idx

    catalogue = import_benchmark("catalogue")
    digits = load_digits()
    images = F.interpolate(torch.tensor(digits.images[:, None] * 255 / 16), size=28,
                           mode="bilinear")[:, 0].round()
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.tensor(digits.target))
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n{catalogue.START}\n{catalogue.END}\n")
    out = tmp_path / "out"
    command = ["--minutes", "0.05", "--configs", "ae", "--out", str(out), "--page", str(page),
               "--mnist-dir", str(tmp_path)]
    catalogue.main(command)
    row = next(line for line in page.read_text().splitlines() if "`model=ae`" in line)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    batch, fd, classes, elbo, nll = int(cells[1]), float(cells[3]), int(cells[6]), *cells[7:9]
    assert batch == 128 and fd > 0 and 1 <= classes <= 10 and elbo == nll == ""
    assert 0 < float(cells[9]) < 0.2  # the reconstruction error
    assert "`python benchmarks/catalogue.py --minutes 0.05`" in page.read_text()
    checkpoint = out / "runs" / "ae" / "checkpoints" / "last.ckpt"
    trained = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    catalogue.main(command)
    assert checkpoint.stat().st_mtime_ns == trained and "ae: trained" not in capsys.readouterr().out
    checkpoint.unlink()  # as if the training had been cut before its end
    (out / "scores" / "ae.json").unlink()
    catalogue.main(command)
    said = capsys.readouterr().out
    assert "has no last.ckpt (interrupted): training it again" in said and "ae: trained" in said
