"""Random pruning at initialisation. S. Liu, T. Chen, X. Chen, L. Shen, D. C. Mocanu, Z. Wang and M.
Pechenizkiy, "The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive Baseline for
Sparse Training", ICLR 2022 (arXiv 2202.02643).

Before training, each prunable layer keeps a uniformly random `keep` fraction of its weights (the
paper's "ERK" and "uniform" layer-wise ratios; this example implements uniform only); the mask never
changes, and the masked network is trained with the task's protocol. A plugin example: a complete
`Pruner` in one file, with its hyperparameters, its checkpointed state and its deployed network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prunebench.knob import CompressionKnob
from prunebench.pruner import Hyperparameters, MaskedPruner


@dataclass
class RandomHparams(Hyperparameters):
    keep: float = field(default=0.1, metadata={"help": "fraction of each layer's weights kept", "gt": 0.0, "max": 1.0})


class RandomPruning(MaskedPruner):
    """The masked-pruner family (`prunebench.pruner.MaskedPruner`) keeps the masks applied after every step
    (weights and their optimizer state), checkpoints them, deploys and scores the masked weights; this
    method only draws its masks."""

    citation = ("Liu et al., The Unreasonable Effectiveness of Random Pruning, ICLR 2022 "
                "(uniform ratios; example plugin)")
    hparams_class = RandomHparams
    # The hyperparameter that trades compression for accuracy, for `prunebench curve`: keeping less prunes more.
    knob = CompressionKnob("keep", raises=False, low=0.001, high=1.0, note="fraction of each layer's weights kept")
    masks_key = "masks"

    def attach(self, model: nn.Module) -> nn.Module:
        super().attach(model)
        # The mask comes from the global generator, which the harness seeded with the run's seed.
        self.keep = {name: (torch.rand_like(m.weight) < self.hp.keep).to(m.weight.dtype) for name, m in self.layers}
        self.apply_masks()
        return model
