"""Relational KD, Park et al. CVPR 2019 (docs/methods.md#rkd); per group of `group_size`."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import register

RKD = register(Method(
    name='rkd', doc='Relational KD: pairwise distances and triplet angles of embeddings',
    taps=dict(tap='pooled'), reads=one_tap, group_size=64,
    hparams=dict(distance_weight=25.0, angle_weight=50.0),
    loss=lambda x, *, distance_weight, angle_weight: losses.rkd(
        *x.student, *x.teacher, distance_weight=distance_weight, angle_weight=angle_weight)))
