"""Spherical KD as PaddleClas implements it (docs/methods.md#skd).

Its cross-entropy is inside the loss: a recipe using it has no `ce` term.
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

SKD = register(Method(
    name='skd', doc='Spherical KD (PaddleClas); includes its own CE, use no `ce` term',
    hparams=dict(temperature=1.0, multiplier=2.0, alpha=0.9),
    loss=lambda x, *, temperature, multiplier, alpha: losses.skd(
        *x.student, *x.teacher, x.labels, temperature=temperature, multiplier=multiplier,
        alpha=alpha)))
