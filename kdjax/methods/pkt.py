"""Probabilistic Knowledge Transfer, Passalis & Tefas ECCV 2018 (docs/methods.md#pkt)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import register

PKT = register(Method(
    name='pkt', doc='PKT: conditional cosine-similarity distributions; per group of group_size',
    taps=dict(tap='pooled'), reads=one_tap, group_size=64,
    loss=lambda x: losses.pkt(*x.student, *x.teacher)))
