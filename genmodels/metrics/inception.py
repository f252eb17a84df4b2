"""Inception FID, KID and IS (torchmetrics), from Inception weights the user has locally.

torchmetrics (through torch-fidelity) downloads the FID Inception weights
(`pt_inception-2015-12-05-6726825d.pth`) on first use; without internet the user points
`inception_weights=<path>` at a copy of that file instead.
"""

from pathlib import Path

import torch

from genmodels.errors import GenmodelsError
from genmodels.metrics.sample_quality import update_in_batches

WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth")


def check_inception_available(weights: str | Path) -> Path:
    """The weights file, after checking it and torch-fidelity exist (clear errors if not)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise GenmodelsError(
            f"inception_weights={str(weights)!r} is not a file. Download the FID Inception "
            f"weights on a machine with internet ({WEIGHTS_URL}) and give their path."
        )
    try:
        import torch_fidelity  # noqa: F401
    except ModuleNotFoundError:
        raise GenmodelsError(
            "Inception metrics need the torch-fidelity package: pip install torch-fidelity "
            "(or pip install -e '.[inception]')."
        ) from None
    return path


def inception_metrics(weights: str | Path, real: torch.Tensor, fake: torch.Tensor,
                      seed: int = 0) -> dict[str, float]:
    """fid_inception, kid_inception (mean, std) and is_inception (mean, std) of uint8 fake
    images against uint8 real ones; grey images are repeated to three channels."""
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    path = str(check_inception_available(weights))
    real, fake = (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x for x in (real, fake))

    def network(features: str):
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[features],
                                  feature_extractor_weights_path=path)

    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path)
    kid = KernelInceptionDistance(feature=network("2048"),
                                  subset_size=min(1000, len(real), len(fake)))
    inception_score = InceptionScore(feature=network("logits_unbiased"))
    with torch.random.fork_rng(devices=[]):  # KID subsets and IS splits are drawn at random
        torch.manual_seed(seed)
        for metric in (fid.to(real.device), kid.to(real.device)):
            update_in_batches(metric, real, fake, batch_size=100)
        inception_score.to(fake.device)
        for start in range(0, len(fake), 100):
            inception_score.update(fake[start : start + 100])
        kid_mean, kid_std = kid.compute()
        is_mean, is_std = inception_score.compute()
    return {"fid_inception": fid.compute().item(), "kid_inception": kid_mean.item(),
            "kid_inception_std": kid_std.item(), "is_inception": is_mean.item(),
            "is_inception_std": is_std.item()}
