"""The table of the model's layers printed when training starts."""

import logging

from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary

from genmodels.engine.lightning_private import format_summary_table

log = logging.getLogger(__name__)


class ModelSummary(LightningModelSummary):
    """Lightning's table of layers and parameter counts, without its FLOPs column and total
    when they are all zero: Lightning counts FLOPs only for models that define an
    `example_input_array`, which these do not."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size,
                  total_training_modes, total_flops=0, **summarize_kwargs) -> None:
        if total_flops:
            columns = summary_data
        else:
            columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = format_summary_table(total_parameters, trainable_parameters, model_size,
                                      total_training_modes, total_flops, *columns)
        lines = table.splitlines()
        if not total_flops:
            lines = [line for line in lines if not line.endswith("Total Flops")]
        log.info("\n" + "\n".join(lines))
