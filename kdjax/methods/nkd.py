"""Normalized KD, Yang et al. ICCV 2023 (docs/methods.md#nkd).

A per-sample loss (no grouping): the teacher's target probability weights the student's
log-probability of the label, and the non-target classes are matched after renormalising them
to sum to one on both sides. Defaults are the reference's ImageNet setting.
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

NKD = register(Method(
    name='nkd', doc='Yang et al. ICCV 2023: teacher-weighted target CE + normalized non-target CE',
    hparams=dict(temperature=1.0, gamma=1.5),
    loss=lambda x, *, temperature, gamma: losses.nkd(
        *x.student, *x.teacher, x.labels, temperature=temperature, gamma=gamma)))
