import lightning as L


class ConfigInCheckpoint(L.Callback):
    """Stores the run's resolved config in every checkpoint, so that a checkpoint file
    alone is enough to rebuild its model (`genmodels.engine.runs.load_model`)."""

    key = "genmodels_config"

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.key] = self.config
