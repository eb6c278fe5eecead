"""Attention Transfer, Zagoruyko & Komodakis ICLR 2017 (docs/methods.md#at)."""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import register
from kdjax.methods.registry import same_taps


def _loss(x, *, p):
  return sum(losses.attention_transfer(s, t, p=p) for s, t in zip(x.student, x.teacher))


AT = register(Method(
    name='at', doc='Attention Transfer: spatial attention maps, summed over the tapped stages',
    taps=dict(taps=('layer1', 'layer2', 'layer3', 'layer4')), reads=same_taps,
    hparams=dict(p=2.0), loss=_loss))
