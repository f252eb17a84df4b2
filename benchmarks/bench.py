"""Training speed through the whole framework versus a bare PyTorch loop.

    python benchmarks/bench.py model=dcgan dataset=digits dataset.batch_size=128

The framework run is `genmodels.jobs.train.train` on the composed config (Hydra + Lightning
+ data module + the configured callbacks, loggers and progress bar, with validation and
testing off). The bare loop trains the same model class, built from the same config, with
the same optimizers on the same in-memory batches: scale, compute the same losses,
backward, step. For a GAN it does every option of `GAN.training_step` (d_steps/g_steps,
half_batch, replay, penalties, EMA, growth, joint_d_batch, eval_generator_for_d;
tests/test_bench.py checks that it ends with the framework's weights); it runs
trainer.precision 32 and bf16-mixed and refuses others. Both count training images per
second over `--steps` batches after `--warmup` batches, so epoch boundaries (shuffling,
per-epoch checkpoints, logging) fall inside the framework's measurement. They alternate
`--rounds` times, so that a machine shared with other work slows both alike; the medians
and the median of the rounds' ratios are printed.

`--compare keras --keras-python <python with TensorFlow>` adds a third column: the seed
text's own Keras code (benchmarks/keras_book.py: Geron's DCGAN loop, or `fit` of his dense
VAE) on the same batch size and thread count, in its own process, in the same rounds.
"""

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, open_dict

from genmodels.config import build
from genmodels.engine.speed import configure_backends, optimize_model
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train
from genmodels.models.diffusion import DDPM
from genmodels.models.gan import GAN
from genmodels.nn.gan_losses import generator_loss

CONF = Path(__file__).resolve().parents[1] / "conf"
KERAS_SCRIPT = Path(__file__).resolve().parent / "keras_book.py"


class StepTimer(L.Callback):
    """Times `steps` training batches of `batch_size` after `warmup` ones, then stops the
    run. A fused batch (speed.fused_batches) counts as the batches it holds."""

    results: list[float] = []  # images per second of each measured window

    def __init__(self, warmup: int, steps: int, batch_size: int):
        self.warmup, self.steps, self.batch_size = warmup, steps, batch_size
        self.batches, self.start = 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += math.ceil(len(batch[0]) / self.batch_size)
        if self.start is None and self.batches >= self.warmup:
            synchronize(trainer.strategy.root_device)
            self.start, self.started_at = time.perf_counter(), self.batches
        elif self.start is not None and self.batches >= self.warmup + self.steps:
            synchronize(trainer.strategy.root_device)
            images = (self.batches - self.started_at) * self.batch_size
            StepTimer.results.append(images / (time.perf_counter() - self.start))
            trainer.should_stop = True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


GROWTH_PHASE_BATCHES = 32


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        except MissingConfigException as error:
            raise GenmodelsError(unknown_config_message(error, overrides)) from None
        except HydraException as error:
            first_line = str(error).strip().splitlines()[0]
            raise GenmodelsError(f"Bad override in {' '.join(overrides)}: {first_line}") from None
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.test = False
        cfg.trainer.limit_val_batches = 0  # training speed only
        cfg.trainer.max_epochs = -1  # StepTimer ends the run
        # ...so it has no length to fit ProGAN's growth phases to: phases of a fixed number
        # of batches, which a measurement of a few hundred batches takes through every stage.
        growth = cfg.model.get("growth")
        if growth is not None and growth.get("fade_images") is None:
            growth.fade_images = growth.stable_images = (GROWTH_PHASE_BATCHES
                                                         * cfg.dataset.batch_size)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def unknown_config_message(error: MissingConfigException, overrides: list[str]) -> str:
    """One sentence for `model=vea`: the bad choice and the valid ones."""
    group = Path(error.missing_cfg_file or "").parent.name
    bad = next((o for o in overrides if o.split("=")[0].lstrip("+~") == group), None)
    choices = ", ".join(error.options or [])
    if bad is None or not choices:
        return str(error).strip().splitlines()[0]
    return f"Unknown config {bad!r}; valid choices for {group}: {choices}."


def framework_speed(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images per second of `train(cfg)`."""
    with open_dict(cfg):
        cfg.callbacks.bench_timer = {"_target_": f"{__name__}.StepTimer", "warmup": warmup,
                                     "steps": steps, "batch_size": cfg.dataset.batch_size}
    StepTimer.results.clear()
    train(cfg)
    return StepTimer.results[-1]


def lightning_speed(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images per second of Lightning alone: the same model and data module under
    a Trainer with nothing added (no callbacks but the timer, no logger, checkpoint,
    progress bar or summary). What it loses to the bare loop is Lightning's own per-step
    work, a floor no callback or logging change in genmodels can go below."""
    configure_backends(cfg.get("speed"))
    L.seed_everything(cfg.seed, verbose=False)
    StepTimer.results.clear()
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
        max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[StepTimer(warmup, steps, cfg.dataset.batch_size)])
    model = optimize_model(build(cfg.model), cfg.get("speed"))
    trainer.fit(model, datamodule=build(cfg.dataset))
    return StepTimer.results[-1]


def bare_speed(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images per second of a plain PyTorch loop doing the same math."""
    configure_backends(cfg.get("speed"))
    L.seed_everything(cfg.seed, verbose=False)
    device = torch.device("cuda" if torch.cuda.is_available()
                          and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu")
    datamodule = build(cfg.dataset)
    datamodule.setup("fit")
    datamodule.splits["train"] = tuple(t.to(device) for t in datamodule.splits["train"])
    model = optimize_model(build(cfg.model), cfg.get("speed")).to(device).train()
    model.monitoring = False  # figures only logged: a bare loop logs nothing
    step = bare_step(model, cfg.trainer.precision)
    # The framework's own batch loader (in-memory indexing, the same per-epoch permutation);
    # without a Trainer it counts epochs itself.
    loader = datamodule.train_dataloader()
    dynamic = datamodule.binarize == "dynamic"
    done = 0
    while True:
        for images, labels in loader:
            step(datamodule.scale(images, dynamic_binarization=dynamic), labels)
            done += 1
            if done == warmup:
                synchronize(device)
                start = time.perf_counter()
            elif done == warmup + steps:
                synchronize(device)
                return steps * cfg.dataset.batch_size / (time.perf_counter() - start)
        step.epoch_end()


BARE_PRECISIONS = ("32", "32-true", "bf16-mixed")


def bare_step(model, precision) -> "BareStep":
    """The bare loop's step for `model` under `trainer.precision`."""
    if str(precision) not in BARE_PRECISIONS:
        raise GenmodelsError(
            f"The benchmark's bare loop reproduces trainer.precision {', '.join(BARE_PRECISIONS)}"
            f", not {precision!r} (its GradScaler steps are Lightning's); pick one of those.")
    if isinstance(model, GAN):
        return BareGANStep(model, precision)
    if isinstance(model, DDPM):
        return BareDiffusionStep(model, precision)
    return BareAutoencodingStep(model, precision)


class BareStep:
    """One training batch in plain PyTorch, under the precision Lightning would use
    (bf16-mixed: autocast around the whole step, without its weight-cast cache, as
    Lightning wraps `training_step`: a cache would keep D's pre-step weights for G's step)."""

    def __init__(self, model, precision):
        self.model = model
        self.optimizers = model.configure_optimizers()
        self.autocast = str(precision) == "bf16-mixed"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(images.device.type, torch.bfloat16, enabled=self.autocast,
                            cache_enabled=False):
            self.step(images, labels)

    def step(self, images, labels) -> None:
        raise NotImplementedError

    def epoch_end(self) -> None:
        pass


class BareAutoencodingStep(BareStep):
    """A model trained by automatic optimization on `losses(batch)["loss"]`, with its
    epoch-wise LR scheduler if it has one. Schedules read from the Trainer (beta-VAE
    capacity, greedy phases) stay at their first step: the same cost per step."""

    def __init__(self, model, precision):
        super().__init__(model, precision)
        self.scheduler = None
        if isinstance(self.optimizers, dict):
            self.scheduler = self.optimizers.get("lr_scheduler")
            self.optimizers = self.optimizers["optimizer"]

    def step(self, x, y) -> None:
        loss = self.model.losses((x, y))["loss"]
        self.optimizers.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers.step()

    def epoch_end(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()


class BareDiffusionStep(BareAutoencodingStep):
    """A DDPM's step: the simple loss's gradient step, then the EMA update the module makes
    after each optimizer step (its warm-up counting this loop's steps)."""

    def __init__(self, model, precision):
        super().__init__(model, precision)
        self.steps_taken = 0

    def step(self, x, y) -> None:
        super().step(x, y)
        self.steps_taken += 1
        self.model.update_ema(self.steps_taken)


class BareGANStep(BareStep):
    """`GAN.training_step` without Lightning: the same phases, options (half_batch,
    replay, penalties, d_steps/g_steps, EMA, growth, joint_d_batch, eval_generator_for_d)
    and random draws in the same order, with none of Lightning's hooks, logging, or the
    module's divergence checks.
    tests/test_bench.py checks that it ends with the framework's weights, bit for bit."""

    def __init__(self, model: GAN, precision):
        super().__init__(model, precision)
        self.d_optimizer, self.g_optimizer = self.optimizers
        # the module derives these from Lightning's global_step
        self.d_steps_taken = self.g_steps_taken = 0

    def step(self, real, labels) -> None:
        gan = self.model
        real, labels = gan.real_batch((real, labels))
        batch_size = len(real)
        # Phase 1: D
        if gan.half_batch:
            real = real[: len(real) // 2]
            labels = labels[: len(real)] if labels is not None else None
        if gan.growth is not None:
            real = gan.grow_for_step(real, self.d_steps_taken, world_size=1)
        fake, fake_labels = gan.fakes_for_discriminator(len(real), labels)
        if gan.replay is not None:
            fake, fresh = gan.replay.mix(fake), fake
            gan.replay.push(fresh)
        with only_trainable_by(self.d_optimizer, self.optimizers):
            d_loss = gan.discriminator_losses(real, labels, fake, fake_labels)["d_loss"]
            take_step(self.d_optimizer, d_loss)
        self.d_steps_taken += 1
        # Phase 2: G, after every d_steps-th D step
        if self.d_steps_taken % gan.d_steps:
            return
        for _ in range(gan.g_steps):
            with only_trainable_by(self.g_optimizer, self.optimizers):
                fake, fake_labels = gan.generate(batch_size)
                take_step(self.g_optimizer,
                          generator_loss(gan.loss, gan.discriminate(fake, fake_labels)))
            self.g_steps_taken += 1
            gan.update_generator_ema(self.g_steps_taken)


def take_step(optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def only_trainable_by(optimizer, optimizers):
    """Lightning's `toggle_optimizer`/`untoggle_optimizer`: only `optimizer`'s parameters
    require gradients inside (the other network is frozen), then every flag is restored."""
    state = {}
    for other in optimizers:
        for group in other.param_groups:
            for param in group["params"]:
                state.setdefault(param, param.requires_grad)
                param.requires_grad = False
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.requires_grad = state[param]
    try:
        yield
    finally:
        for param, flag in state.items():
            param.requires_grad = flag


def keras_recipe(cfg: DictConfig) -> str:
    """The seed text's Keras network that `cfg.model` reproduces: dcgan or vae."""
    model = cfg.model
    if model._target_.endswith(".GAN") and model.generator._target_.endswith("DCGANGenerator"):
        return "dcgan"
    if model._target_.endswith(".VAE") and model.encoder._target_.endswith("DenseEncoder"):
        return "vae"
    raise GenmodelsError("--compare keras runs the book's Keras DCGAN (model=dcgan, "
                         "experiment=dcgan_fashion) and dense VAE (model=vae, experiment="
                         f"vae_fashion); {model._target_} has no Keras counterpart here.")


def keras_speed(cfg: DictConfig, recipe: str, python: str, warmup: int, steps: int) -> float:
    """Training images per second of the book's Keras code (benchmarks/keras_book.py) in
    `python`, TensorFlow's own interpreter, with as many threads as PyTorch uses."""
    command = [python, str(KERAS_SCRIPT), "speed", "--model", recipe,
               "--batch-size", str(cfg.dataset.batch_size), "--steps", str(steps),
               "--warmup", str(warmup), "--rounds", "1",
               "--threads", str(torch.get_num_threads())]
    if cfg.dataset.get("images"):
        command += ["--images", str(cfg.dataset.images)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        raise GenmodelsError(f"The Keras benchmark failed ({' '.join(command)}): "
                             f"{detail.strip().splitlines()[-1]}") from None
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"][0]


def positive_int(minimum: int):
    """An argparse type: an integer >= minimum, or one sentence naming the bad value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    return parse


def measure(overrides: list[str], args, lightning_alone: bool = False) -> dict[str, list[float]]:
    """Images per second of each runner (framework, bare, maybe Lightning alone and Keras),
    per round."""
    overrides = ["logger=csv", *overrides]
    runners = (["framework", "bare"] + (["lightning"] if lightning_alone else [])
               + (["keras"] if args.compare else []))
    speeds = {name: [] for name in runners}
    with tempfile.TemporaryDirectory() as tmp:
        # Compose (and check) the config before anything runs.
        cfg = compose_config(overrides, Path(tmp) / "check")
        recipe = keras_recipe(cfg) if args.compare else None
        for round_ in range(args.rounds):
            cfg = compose_config(overrides, Path(tmp) / f"run{round_}")
            # Rotate which goes first, so that none always runs on a warmer machine.
            for name in runners[round_ % len(runners):] + runners[: round_ % len(runners)]:
                if name == "framework":
                    speeds[name].append(framework_speed(cfg, args.warmup, args.steps))
                elif name == "bare":
                    speeds[name].append(bare_speed(cfg, args.warmup, args.steps))
                elif name == "lightning":
                    speeds[name].append(lightning_speed(cfg, args.warmup, args.steps))
                else:
                    speeds[name].append(keras_speed(cfg, recipe, args.keras_python,
                                                    args.warmup, args.steps))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {values[-1]:.0f} images/s" for name, values in speeds.items()),
                flush=True)
    return speeds


def summarize(speeds: dict[str, list[float]]) -> dict[str, float]:
    """Medians of each runner, and the median of the rounds' framework/bare ratios (the
    two runs of a round shared the machine's load)."""
    result = {name: statistics.median(values) for name, values in speeds.items()}
    result["ratio"] = statistics.median(
        f / b for f, b in zip(speeds["framework"], speeds["bare"], strict=True))
    if "lightning" in speeds:
        result["lightning_ratio"] = statistics.median(
            f / b for f, b in zip(speeds["lightning"], speeds["bare"], strict=True))
    return result


# Networks so small that a step's compute is near zero: what remains is each loop's
# per-step host work (hooks, logging, closures), the cost a fast GPU exposes.
TINY = {
    "ae": ["model.encoder.hidden_sizes=[16]", "model.decoder.hidden_sizes=[16]",
           "model.codings_dim=2"],
    "vae": ["model.encoder.hidden_sizes=[16]", "model.decoder.hidden_sizes=[16]",
            "model.latent_dim=2"],
    "dcgan": ["model.generator.widths=[16,8]", "model.discriminator.widths=[8,16]"],
    "wgan_gp": ["model.generator.widths=[16,8]", "model.discriminator.widths=[8,16]"],
    "progan": ["model.generator.max_width=16", "model.generator.min_width=8",
               "model.latent_dim=16"],
    "stylegan": ["model.generator.max_width=16", "model.generator.min_width=8",
                 "model.generator.mapping_layers=2", "model.latent_dim=16"],
}
TINY_BATCH = 8


def tiny_table(args) -> dict[str, dict[str, float]]:
    """Microseconds per training step (one batch of TINY_BATCH) through the framework,
    Lightning alone and the bare loop, and the ratios to the bare loop, for tiny networks
    of each family, one CPU thread."""
    rows = {}
    for model, tiny in TINY.items():
        speeds = measure([f"model={model}", *tiny, f"dataset.batch_size={TINY_BATCH}",
                          "speed.cpu_threads=1", "trainer.enable_progress_bar=false",
                          *args.overrides], args, lightning_alone=True)
        result = summarize(speeds)
        rows[model] = {"framework_us": 1e6 * TINY_BATCH / result["framework"],
                       "lightning_us": 1e6 * TINY_BATCH / result["lightning"],
                       "bare_us": 1e6 * TINY_BATCH / result["bare"], "ratio": result["ratio"],
                       "lightning_ratio": result["lightning_ratio"]}
    print("\n| model | framework µs/step | Lightning alone µs/step | bare µs/step "
          "| framework/bare | Lightning alone/bare |\n|---|---|---|---|---|---|")
    for model, row in rows.items():
        print(f"| {model} | {row['framework_us']:.0f} | {row['lightning_us']:.0f} | "
              f"{row['bare_us']:.0f} | {row['ratio']:.2f} | {row['lightning_ratio']:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for train.py")
    parser.add_argument("--steps", type=positive_int(1), default=200,
                        help="measured batches per round")
    # At least one: the first batch pays for one-time setup (allocations, lazy init).
    parser.add_argument("--warmup", type=positive_int(1), default=20,
                        help="unmeasured batches first (>= 1)")
    parser.add_argument("--rounds", type=positive_int(1), default=3,
                        help="framework/bare alternations")
    parser.add_argument("--compare", choices=["keras"], default=None,
                        help="also time the seed text's Keras code (a third column)")
    parser.add_argument("--tiny", action="store_true",
                        help="a table of µs per step, framework, Lightning alone and bare, "
                             "for tiny networks of each family (ae, vae, dcgan, wgan_gp, "
                             "progan, stylegan)")
    parser.add_argument("--keras-python", default=None,
                        help="with --compare keras: a Python that has TensorFlow")
    args = parser.parse_args(argv)
    if args.compare and not args.keras_python:
        raise GenmodelsError("--compare keras needs --keras-python <a Python with "
                             "TensorFlow>, e.g. a virtualenv's bin/python (genmodels "
                             "itself does not depend on TensorFlow).")
    if args.tiny:
        return tiny_table(args)
    speeds = measure(args.overrides, args)
    # The ratio of each round's pair, whose runs shared the machine's load, then median.
    result = summarize(speeds)
    line = (f"{' '.join(args.overrides)}: framework {result['framework']:.0f} images/s, "
            f"bare PyTorch loop {result['bare']:.0f} images/s, ratio {result['ratio']:.3f}")
    if args.compare:
        result["keras_ratio"] = statistics.median(
            f / k for f, k in zip(speeds["framework"], speeds["keras"], strict=True))
        line += (f"; Keras {result['keras']:.0f} images/s, framework/Keras "
                 f"{result['keras_ratio']:.3f}")
    print(f"{line} (medians of {args.rounds} rotating rounds of {args.steps} batches; "
          f"ratios: medians of the rounds' ratios; {torch.get_num_threads()} threads)")
    return result


if __name__ == "__main__":
    try:
        main()
    except GenmodelsError as error:
        sys.exit(f"Error: {error}")
