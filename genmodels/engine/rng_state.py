"""Random generator states saved in checkpoints, for exactly reproducible resumes."""

import random

import lightning as L
import numpy as np
import torch


class RNGStateInCheckpoint(L.Callback):
    """Stores the global random number generators' states in every checkpoint and restores
    them on resume, so that a resumed run draws the same noise (VAE sampling, GAN latents,
    dropout masks) as an uninterrupted one, and ends with the same weights on CPU.

    Lightning restores model, optimizer and loop state but not these generators. The
    sanity-check validation at the start of a resumed fit runs under Lightning's
    `isolate_rng`, so it does not disturb them. (Under DDP every rank gets rank zero's
    state back; `seed_everything` already gives all ranks the same seed.)
    """

    key = "genmodels_rng_states"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.key] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # As plain types and tensors: Lightning loads checkpoints with weights_only=True.
            "numpy": numpy_state_to_torch(np.random.get_state()),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = checkpoint.get(self.key)
        if states is None:  # written before this callback existed: nothing to restore
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        np.random.set_state(numpy_state_from_torch(states["numpy"]))
        random.setstate(states["python"])


def numpy_state_to_torch(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached_gaussian = state
    return name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian


def numpy_state_from_torch(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached_gaussian = state
    return name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian
