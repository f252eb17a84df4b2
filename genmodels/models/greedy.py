"""Greedy layer-wise training of a stacked autoencoder (Bengio et al., "Greedy Layer-Wise
Training of Deep Networks", 2007; Hinton & Salakhutdinov, 2006)."""

import logging

import torch
import torch.nn.functional as F

from genmodels.errors import GenmodelsError
from genmodels.models.autoencoder import AutoEncoder
from genmodels.nn.dense import dense_stages

log = logging.getLogger(__name__)


class GreedyAutoEncoder(AutoEncoder):
    """A dense stacked autoencoder trained one layer pair at a time, then as a whole.

    With encoder layers E1..En and the mirrored decoder layers Dn..D1, phase k (1..n)
    trains the shallow autoencoder Ek -> Dk on the codings of the frozen layers E1..E(k-1),
    for `epochs_per_phase` epochs: phase 1 reconstructs the images (the model's loss),
    later phases reconstruct the previous codings (MSE). The codings are recomputed with
    the frozen layers on each batch, which equals encoding the data once, without storing
    it. The shallow autoencoders are the layers of the deep one, so stacking them needs no
    copying. With `finetune`, the final phase n+1 trains the whole stack end to end;
    without, training stays in phase n.

    Logged: `train/phase`, `loss` (the current phase's objective) and `recon` (the deep
    autoencoder's reconstruction loss, comparable across phases and models); each phase's
    start is announced in the console log.
    """

    def __init__(self, *args, epochs_per_phase: int = 2, finetune: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if epochs_per_phase < 1:
            raise GenmodelsError(f"epochs_per_phase must be >= 1, got {epochs_per_phase!r}.")
        self.epochs_per_phase, self.finetune = epochs_per_phase, finetune
        # Lists, not ModuleLists: the layers are registered once, in encoder and decoder.
        self.encoder_stages = dense_stages(self.encoder)
        self.decoder_stages = dense_stages(self.decoder)[::-1]  # D1 (output layer) first
        widths = [(s[0].in_features, s[0].out_features) for s in self.encoder_stages]
        mirrored = [(s[0].out_features, s[0].in_features) for s in self.decoder_stages]
        if not widths or widths != mirrored:
            raise GenmodelsError(
                "greedy layer-wise training needs a dense decoder that mirrors the dense "
                f"encoder; encoder layers {widths}, decoder layers reversed {mirrored}."
            )
        self.num_layers = len(widths)
        self._announced_phase = None

    @property
    def phase(self) -> int:
        """1..num_layers: one layer pair; num_layers + 1: fine-tuning the whole stack."""
        last = self.num_layers + 1 if self.finetune else self.num_layers
        return min(self.current_epoch // self.epochs_per_phase + 1, last)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        k = self.phase
        if not self.training or k > self.num_layers:
            recon = super().losses(batch)["loss"]  # the deep autoencoder's loss
            return {"loss": recon, "recon": recon}
        with torch.no_grad():  # the layers trained in earlier phases stay frozen
            recon = super().losses(batch)["loss"]
            inputs = x.flatten(1)
            for stage in self.encoder_stages[: k - 1]:
                inputs = stage(inputs)
        output = self.decoder_stages[k - 1](self.encoder_stages[k - 1](inputs))
        if k == 1:
            phase_loss = self.loss_from_decoder_output(x, output.view_as(x))
        else:
            phase_loss = F.mse_loss(output, inputs)
        return {"loss": phase_loss, "recon": recon}

    def training_step(self, batch, batch_idx):
        self.log("train/phase", float(self.phase), on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        k = self.phase
        if k == self._announced_phase:
            return
        self._announced_phase = k
        if k > self.num_layers:
            what = "fine-tuning the whole stacked autoencoder end to end"
        else:
            n_in, n_out = (self.encoder_stages[k - 1][0].in_features,
                           self.encoder_stages[k - 1][0].out_features)
            frozen = "layer 1" if k == 2 else f"layers 1..{k - 1}"
            source = "the images" if k == 1 else f"the codings of frozen {frozen}"
            what = f"training layer pair {k} ({n_in} -> {n_out} -> {n_in}) on {source}"
        total = self.num_layers + int(self.finetune)
        log.info("Greedy phase %d/%d from epoch %d: %s.", k, total, self.current_epoch, what)
