"""OFA-KD's logit loss, Hao et al. NeurIPS 2023 (docs/methods.md#ofa)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

OFA = register(Method(
    name='ofa', doc='Hao et al. NeurIPS 2023: target-class-enhanced KD (exponent eps)',
    hparams=dict(temperature=1.0, eps=1.0),
    loss=lambda x, *, temperature, eps: losses.ofa(*x.student, *x.teacher, x.labels,
                                                   temperature=temperature, eps=eps)))
