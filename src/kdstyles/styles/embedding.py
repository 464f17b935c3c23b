"""``embedding``: the learner's penultimate embedding (the input of its last Linear layer)
through a projector to the source's embedding, as the foundation-model distillation papers
match a small network's pooled features to a large teacher's class token.

The projector is the receiver's adapter (a Linear layer and batch norm from the learner's
width to the source's, trained with the learner, kept out of the exported network), created
when the widths differ. With ``p`` the projected learner embedding and ``t`` the source's:

- ``cosine`` (default): ``1 - cos(p, t)``, averaged over the batch: the direction of the
  embedding, not its scale (whose magnitude differs widely between a ViT and a CNN);
- ``smooth_l1``: the Huber loss (beta 1) between ``p`` and ``t``, each standardised over its
  features first, so the loss does not depend on the teacher's scale;
- ``mse``: the mean squared error between the two, standardised the same way.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from .base import Style, StyleOptions, zscore


class EmbeddingOptions(StyleOptions):
    loss: Literal["cosine", "smooth_l1", "mse"] = Field("cosine", description="how the projected embedding is "
                                                        "compared with the source's")


class Embedding(Style):
    name = "embedding"
    Options = EmbeddingOptions
    consumes = "embedding"
    adapter = "project"

    def loss(self, source, target, options):
        source, target = source.flatten(1).float(), target.flatten(1).float()
        if options.loss == "cosine":
            return (1 - F.cosine_similarity(target, source, dim=1)).mean()
        compare = F.smooth_l1_loss if options.loss == "smooth_l1" else F.mse_loss
        return compare(zscore(target), zscore(source))
