"""LSTM encoders and decoders that read an image as a sequence of rows.

Each of the image_size rows (all channels side by side: channels * image_size features)
is one time step (Geron, Hands-On ML ch. 17, "Recurrent Autoencoders").
"""

import torch
from torch import nn

from genmodels.errors import GenmodelsError
from genmodels.nn.layers import check_image_shape


def stacked_lstms(input_size: int, hidden_sizes: list[int]) -> nn.ModuleList:
    """One single-layer LSTM per width (nn.LSTM's own stacking needs equal widths)."""
    sizes = [input_size, *hidden_sizes]
    return nn.ModuleList(nn.LSTM(n_in, n_out, batch_first=True)
                         for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))


class RowLSTMEncoder(nn.Module):
    """Sequence to vector: rows -> stacked LSTMs -> the last LSTM's final hidden state.

    The codings are that final state, of size `out_features` (in (-1, 1): tanh of the cell).
    """

    def __init__(self, channels: int, image_size: int, hidden_sizes: list[int] = (100,),
                 out_features: int = 30):
        super().__init__()
        check_image_shape(channels, image_size)
        self.lstms = stacked_lstms(channels * image_size, [*hidden_sizes, out_features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.permute(0, 2, 1, 3).flatten(2)  # (N, C, H, W) -> (N, H rows, C * W)
        for lstm in self.lstms:
            h, _ = lstm(h)
        return h[:, -1]


class RowLSTMDecoder(nn.Module):
    """Vector to sequence: the codings repeated at every row -> stacked LSTMs -> a dense
    layer per time step -> one row of pixels (raw logits) per step."""

    def __init__(self, latent_dim: int, channels: int, image_size: int,
                 hidden_sizes: list[int] = (100,)):
        super().__init__()
        check_image_shape(channels, image_size)
        if not hidden_sizes:
            raise GenmodelsError("RowLSTMDecoder needs at least one LSTM in hidden_sizes.")
        self.image_shape = (channels, image_size, image_size)
        self.lstms = stacked_lstms(latent_dim, list(hidden_sizes))
        self.to_row = nn.Linear(hidden_sizes[-1], channels * image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.image_shape
        h = z.unsqueeze(1).expand(-1, height, -1)  # (N, rows, latent_dim)
        for lstm in self.lstms:
            h, _ = lstm(h)
        rows = self.to_row(h)  # (N, H, C * W)
        return rows.unflatten(2, (channels, width)).permute(0, 2, 1, 3)
