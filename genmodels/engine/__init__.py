"""The training machinery every run has, whatever its model and config: training logs at
Lightning's logging steps, the divergence guard, max_steps in the model's own steps, random
numbers per process and step, fused batches and speed settings, the config in checkpoints,
run directories and records, finding and reloading runs, and the one module that touches
Lightning's privates.

A model holds its algorithm (genmodels/models/); the engine holds what runs it. With a
Trainer of your own, add `essential_callbacks()` to get what `train.py` gives every run.
"""


def essential_callbacks(seed: int = 0) -> list:
    """Training logs, the divergence guard, max_steps in the model's own steps and random
    numbers of each process's own, seeded from `seed`, rank and step: the callbacks without
    which a genmodels model trains but logs and checks nothing."""
    # Imported here: the package's light modules (rundirs, runs' helpers) serve
    # `train.py --help` and its start-up checks without loading Lightning and PyTorch.
    from genmodels.engine.divergence import DivergenceGuard
    from genmodels.engine.random_streams import RandomStreams
    from genmodels.engine.step_budget import StepBudget
    from genmodels.engine.training_logs import TrainingLogs

    return [TrainingLogs(), DivergenceGuard(), StepBudget(), RandomStreams(seed)]
