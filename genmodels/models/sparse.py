"""Sparse autoencoders: many codings, few of them active for any one input."""

import torch

from genmodels.errors import GenmodelsError
from genmodels.models.autoencoder import AutoEncoder

PENALTIES = ("kl", "l1")


def kl_sparsity(target: float, mean_activation: torch.Tensor) -> torch.Tensor:
    """sum_j KL(Bernoulli(target) || Bernoulli(rho_j)) over coding neurons j, where rho_j is
    neuron j's mean activation over the batch (Ng, "Sparse autoencoder", CS294A notes, 2011):
    target * log(target / rho_j) + (1 - target) * log((1 - target) / (1 - rho_j))."""
    rho = mean_activation.clamp(1e-6, 1 - 1e-6)
    return (target * torch.log(target / rho)
            + (1 - target) * torch.log((1 - target) / (1 - rho))).sum()


class SparseAutoEncoder(AutoEncoder):
    """An autoencoder whose loss adds `sparsity_weight` times a sparsity penalty on the
    codings (use a sigmoid coding layer, so activations lie in [0, 1]):

    - penalty="kl": `kl_sparsity` between `target_activation` and each neuron's mean
      activation over the batch, summed over neurons;
    - penalty="l1": the mean over the batch of sum_j |c_j| (Keras' activity L1).

    Logged with every loss: `recon`, `sparsity` (the unweighted penalty) and, on logging
    steps, `mean_activation` and `near_zero` (fraction of codings below
    `near_zero_threshold`). At each validation
    epoch's end, TensorBoard also gets histograms of the coding activations and of the
    per-neuron mean activations over the validation images.
    """

    def __init__(self, *args, penalty: str = "kl", sparsity_weight: float = 0.05,
                 target_activation: float = 0.1, near_zero_threshold: float = 0.05,
                 max_histogram_images: int = 2000, **kwargs):
        super().__init__(*args, **kwargs)
        if penalty not in PENALTIES:
            raise GenmodelsError(f"Unknown sparsity penalty {penalty!r}; valid: {PENALTIES}.")
        if not 0 < target_activation < 1:
            raise GenmodelsError(
                f"target_activation must be in (0, 1), got {target_activation!r}."
            )
        self.penalty, self.sparsity_weight = penalty, sparsity_weight
        self.target_activation, self.near_zero_threshold = target_activation, near_zero_threshold
        self.max_histogram_images = max_histogram_images
        self._val_codings: list[torch.Tensor] = []

    def sparsity_penalty(self, codings: torch.Tensor) -> torch.Tensor:
        if self.penalty == "kl":
            return kl_sparsity(self.target_activation, codings.float().mean(0))
        return codings.float().abs().sum(1).mean()

    def losses(self, batch) -> dict[str, torch.Tensor]:
        x, _ = batch
        codings = self.encode(x)
        if self.training:
            self._track_codings_range(codings.detach())
        recon = self.reconstruction_loss(x, codings)
        sparsity = self.sparsity_penalty(codings)
        losses = {"loss": recon + self.sparsity_weight * sparsity, "recon": recon,
                  "sparsity": sparsity}
        if self.monitoring or not self.training:
            losses["mean_activation"] = codings.detach().float().mean()
            losses["near_zero"] = (codings.detach().abs() < self.near_zero_threshold).float().mean()
        return losses

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        if sum(len(c) for c in self._val_codings) < self.max_histogram_images:
            self._val_codings.append(self.encode(batch[0]).float().cpu())

    def histograms(self) -> dict[str, torch.Tensor]:
        """The coding activations of the last validation epoch, and each neuron's mean
        activation, for TensorBoard (the engine draws them after each validation epoch)."""
        codings, self._val_codings = self._val_codings, []
        if not codings:
            return {}
        codings = torch.cat(codings)
        return {"codings/activations": codings,
                "codings/neuron_mean_activations": codings.mean(0)}
