"""Neuron Selectivity Transfer, Huang & Wang 2017 (docs/methods.md#nst)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register
from kdjax.methods.registry import same_taps

NST = register(Method(
    name='nst', doc='Neuron Selectivity Transfer: polynomial-kernel MMD, summed over the stages',
    taps=dict(taps=('layer1', 'layer2', 'layer3', 'layer4')), reads=same_taps,
    loss=lambda x: sum(losses.nst(s, t) for s, t in zip(x.student, x.teacher))))
