"""Similarity-Preserving KD, Tung & Mori ICCV 2019 (docs/methods.md#sp).

The batch similarity matrix depends on which examples share a batch: computed per group of
`group_size` examples (64, the reference's CIFAR batch).
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import register

SP = register(Method(
    name='sp', doc='Similarity-Preserving KD: batch similarity matrices of one tap',
    taps=dict(tap='layer4'), reads=one_tap, group_size=64,
    loss=lambda x: losses.similarity_preserving(*x.student, *x.teacher)))
