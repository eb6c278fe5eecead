"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (docs/methods.md#kd)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

KD = register(Method(
    name='kd', doc='Hinton et al. 2015: KL between temperature-softened outputs, times T^2',
    hparams=dict(temperature=4.0),
    loss=lambda x, *, temperature: losses.kd(*x.student, *x.teacher, temperature=temperature)))
