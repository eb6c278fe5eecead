"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (docs/methods.md#kd).

`standardize=True` is logit standardization (Sun et al. CVPR 2024, docs/methods.md#kd): both
sides' logits z-scored per row before the temperature.
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

KD = register(Method(
    name='kd', doc='Hinton et al. 2015: KL between temperature-softened outputs, times T^2',
    hparams=dict(temperature=4.0, standardize=False),
    loss=lambda x, *, temperature, standardize: losses.kd(
        *x.student, *x.teacher, temperature=temperature, standardize=standardize)))
