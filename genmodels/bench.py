"""Training speed through the whole framework versus a bare PyTorch loop.

    python -m genmodels.bench model=dcgan dataset=digits dataset.batch_size=128

The framework run is `genmodels.training.train` on the composed config (Hydra + Lightning
+ data module + the configured callbacks, loggers and progress bar, with validation and
testing off). The bare loop trains the same model class, built from the same config, with
the same optimizers on the same in-memory tensors: index a batch, scale it, compute the
same losses, backward, step. Both count training images per second over `--steps`
batches after `--warmup` batches, so epoch boundaries (shuffling, per-epoch checkpoints,
logging) fall inside the framework's measurement. The two alternate `--rounds` times, so
that a machine shared with other work slows both alike; the medians and the median of
the rounds' ratios are printed.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from genmodels.config import build
from genmodels.models.gan import GAN
from genmodels.nn.gan_losses import generator_loss
from genmodels.speed import configure_backends, optimize_model
from genmodels.training import train

CONF = Path(__file__).resolve().parents[1] / "conf"


class StepTimer(L.Callback):
    """Times `steps` training batches after `warmup` ones, then stops the run."""

    results: list[float] = []  # seconds per measured window, read by `framework_speed`

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.batches = warmup, steps, 0

    def on_train_batch_end(self, trainer, *args, **kwargs):
        self.batches += 1
        if self.batches == self.warmup:
            synchronize(trainer.strategy.root_device)
            self.start = time.perf_counter()
        elif self.batches == self.warmup + self.steps:
            synchronize(trainer.strategy.root_device)
            StepTimer.results.append(time.perf_counter() - self.start)
            trainer.should_stop = True


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.test = False
        cfg.trainer.limit_val_batches = 0  # training speed only
        cfg.trainer.max_epochs = -1  # StepTimer ends the run
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def framework_speed(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images per second of `train(cfg)`."""
    with open_dict(cfg):
        cfg.callbacks.bench_timer = {"_target_": f"{__name__}.StepTimer",
                                     "warmup": warmup, "steps": steps}
    StepTimer.results.clear()
    train(cfg)
    return steps * cfg.dataset.batch_size / StepTimer.results[-1]


def bare_speed(cfg: DictConfig, warmup: int, steps: int) -> float:
    """Training images per second of a plain PyTorch loop doing the same math."""
    configure_backends(cfg.get("speed"))
    L.seed_everything(cfg.seed, verbose=False)
    device = torch.device("cuda" if torch.cuda.is_available()
                          and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu")
    datamodule = build(cfg.dataset)
    datamodule.setup("fit")
    images, labels = (t.to(device) for t in datamodule.splits["train"])
    model = optimize_model(build(cfg.model), cfg.get("speed")).to(device).train()
    optimizers = model.configure_optimizers()
    step = gan_step if isinstance(model, GAN) else autoencoding_step
    batch_size, n = cfg.dataset.batch_size, len(images)
    batches_per_epoch = n // batch_size
    done, epoch = 0, 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        order = order.to(device)
        for i in range(batches_per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            step(model, optimizers, datamodule.scale(images[index]), labels[index])
            done += 1
            if done == warmup:
                synchronize(device)
                start = time.perf_counter()
            elif done == warmup + steps:
                synchronize(device)
                return steps * batch_size / (time.perf_counter() - start)
        epoch += 1


def autoencoding_step(model, optimizer, x, y) -> None:
    """One step of a model trained by automatic optimization on `losses(batch)["loss"]`."""
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]
    loss = model.losses((x, y))["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def gan_step(model: GAN, optimizers, real, y) -> None:
    """The GAN's two phases as `GAN.training_step` runs them with one D step per G step
    (D frozen in the G phase); replay, penalties and EMA are left to the framework run."""
    d_optimizer, g_optimizer = optimizers
    labels = y if model.num_classes is not None else None
    with torch.no_grad():
        fake, fake_labels = model.generate(len(real))
    d_loss = model.discriminator_losses(real, labels, fake, fake_labels)["d_loss"]
    d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    d_optimizer.step()
    model.discriminator.requires_grad_(False)
    fake, fake_labels = model.generate(len(real))
    g_loss = generator_loss(model.loss, model.discriminate(fake, fake_labels))
    g_optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    g_optimizer.step()
    model.discriminator.requires_grad_(True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for train.py")
    parser.add_argument("--steps", type=int, default=200, help="measured batches per round")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured batches first")
    parser.add_argument("--rounds", type=int, default=3, help="framework/bare alternations")
    args = parser.parse_args(argv)
    overrides = ["logger=csv", *args.overrides]
    framework, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            cfg = compose_config(overrides, Path(tmp) / f"run{round_}")
            # Alternate which goes first, so that neither always runs on a warmer machine.
            order = (0, 1) if round_ % 2 == 0 else (1, 0)
            for which in order:
                if which == 0:
                    framework.append(framework_speed(cfg, args.warmup, args.steps))
                else:
                    bare.append(bare_speed(cfg, args.warmup, args.steps))
            print(f"round {round_ + 1}: framework {framework[-1]:.0f} images/s, "
                  f"bare loop {bare[-1]:.0f} images/s", flush=True)
    # The ratio of each round's pair, whose two runs shared the machine's load, then median.
    ratios = [f / b for f, b in zip(framework, bare, strict=True)]
    result = {"framework": statistics.median(framework), "bare": statistics.median(bare),
              "ratio": statistics.median(ratios)}
    print(f"{' '.join(args.overrides)}: framework {result['framework']:.0f} images/s, "
          f"bare PyTorch loop {result['bare']:.0f} images/s, ratio {result['ratio']:.3f} "
          f"(medians of {args.rounds} alternating rounds of {args.steps} batches; ratio: "
          f"median of the rounds' ratios)")
    return result


if __name__ == "__main__":
    main()
