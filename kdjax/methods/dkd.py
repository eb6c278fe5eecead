"""Decoupled KD, Zhao et al. CVPR 2022 (docs/methods.md#dkd).

`standardize=True` is logit standardization (Sun et al. CVPR 2024): both sides' logits
z-scored per row before the temperature and the target / non-target split.
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

DKD = register(Method(
    name='dkd', doc='Zhao et al. CVPR 2022: target-class and non-target-class KD, weighted apart',
    hparams=dict(alpha=1.0, beta=8.0, temperature=4.0, standardize=False),
    loss=lambda x, *, alpha, beta, temperature, standardize: losses.dkd(
        *x.student, *x.teacher, x.labels, alpha=alpha, beta=beta, temperature=temperature,
        standardize=standardize)))
