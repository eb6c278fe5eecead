"""Weighted soft labels, Zhou et al. ICLR 2021 (docs/methods.md#wsl)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

WSL = register(Method(
    name='wsl', doc='Zhou et al. ICLR 2021: KD weighted per example by the CE ratio',
    hparams=dict(temperature=2.0),
    loss=lambda x, *, temperature: losses.wsl(*x.student, *x.teacher, x.labels,
                                              temperature=temperature)))
