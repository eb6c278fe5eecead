"""DIST, Huang et al. NeurIPS 2022 (docs/methods.md#dist).

Its intra-class term correlates each class's probabilities across the batch, so the loss is
computed per group of `group_size` examples (32: the reference's per-GPU batch).
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

DIST = register(Method(
    name='dist', doc='Huang et al. NeurIPS 2022: inter- and intra-class Pearson correlation',
    hparams=dict(beta=1.0, gamma=1.0, temperature=1.0), group_size=32,
    loss=lambda x, *, beta, gamma, temperature: losses.dist(
        *x.student, *x.teacher, beta=beta, gamma=gamma, temperature=temperature)))
