"""The PaddleClas mutual-learning family (docs/methods.md#dml, #udml, #ssld).

  dml   two trainable peers learn from each other's outputs (symmetric KL, no temperature);
  udml  its feature term: the peers' tapped features are pulled together;
  ssld  the same symmetric loss against a frozen teacher, on labelled and unlabelled images.
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

DML = register(Method(
    name='dml', doc='Deep Mutual Learning, PaddleClas joint form: student vs peer',
    hparams=dict(eps=1e-12), reads=lambda: {'student': ('logits',), 'peer': ('logits',)},
    loss=lambda x, *, eps: losses.dml(*x.student, *x.peer, eps=eps)))

UDML = register(Method(
    name='udml', doc='UDML feature term: mean squared distance between the two peers',
    taps=dict(tap='layer3'), reads=lambda tap: {'student': (tap,), 'peer': (tap,)},
    loss=lambda x: losses.feature_distance(*x.student, *x.peer)))

SSLD = register(Method(
    name='ssld', doc='SSLD: the DML-form loss against the frozen teacher; needs no labels',
    hparams=dict(eps=1e-12),
    loss=lambda x, *, eps: losses.dml(*x.student, *x.teacher, eps=eps)))
