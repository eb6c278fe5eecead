"""Show, Attend and Distill, Ji et al. AAAI 2021 (docs/methods.md#afd).

For every teacher tap, trainable attention over the student taps decides which student
feature should match it. The connector holds every trainable module of the reference
(clovaai/attention-feature-distillation `distill/AFD.py`) and returns the attention
`[B, T, S]`; the parameter-free values and the loss are `kdjax.losses.afd`.

  teacher side  Q_j  = BN1d(Linear_{C_j -> d}(GAP(sg F_t_j)))                   `query_layer{j}`
  student side  k_i  = ReLU(BN1d(Linear_{C_i -> d}(GAP(F_s_i))))                `key_layer{i}`
                Kb   = BN1d(Linear_{d -> d*T}(k)) on the stacked [B*S, d] keys  `bilinear`
                       (its statistics over the B*S rows), viewed as [B, S, T, d]
  positional    P_t [T, d], P_s [S, d]                                          `p_t`, `p_s`
  attention     softmax_i((<Kb[b,i,j], Q[b,j]> + <P_t[j], P_s[i]>) / sqrt(d))

Every Linear has PyTorch's default init, every BatchNorm1d weight 1 / bias 0, momentum 0.1
(Flax 0.9), eps 1e-5, batch statistics in training (so a training batch needs B > 1), and the
positional tables PyTorch's `xavier_normal_`. Channel counts and the numbers of taps come from
the tapped shapes. The term weight is the paper's w_afd (50 on ImageNet, 200 on CIFAR-100).
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.layers import batch_norm
from kdjax.layers import torch_dense
from kdjax.layers import xavier_normal
from kdjax.methods.registry import Method
from kdjax.methods.registry import paired_taps
from kdjax.methods.registry import register


class Attention(NamedTuple):
  attention: jax.Array   # [B, T, S]: every teacher tap's softmax over the student taps


def _gap(f):
  """Global average over H, W of an NHWC map, in float32: `[B, H, W, C] -> [B, C]`."""
  return jnp.mean(f.astype(jnp.float32), axis=(1, 2))


class LinearBN(nn.Module):
  """The reference's `nn_bn_relu`: Linear -> BatchNorm1d [-> ReLU]."""
  features: int
  in_features: int
  relu: bool

  @nn.compact
  def __call__(self, x, train):
    x = torch_dense(self.features, in_features=self.in_features, name='linear')(x)
    x = batch_norm(train, 'bn', None)(x)
    return nn.relu(x) if self.relu else x


class AFDAttention(nn.Module):
  """The attention of every teacher tap over the student taps."""
  student_channels: tuple
  teacher_channels: tuple
  qk_dim: int = 128

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del batch
    d, n_s, n_t = self.qk_dim, len(student), len(teacher)
    batch_size = student[0].shape[0]
    if train and batch_size < 2:
      raise KdjaxError('afd: its BatchNorm1d layers need more than one example per training '
                       f'batch, got {batch_size}; raise batch_size')
    # Teacher side: trainable queries from the detached teacher taps.
    query = jnp.stack([
        LinearBN(d, c, relu=False, name=f'query_layer{j}')(_gap(jax.lax.stop_gradient(t)), train)
        for j, (t, c) in enumerate(zip(teacher, self.teacher_channels))], axis=1)
    # Student side: one key per student tap, then the shared bilinear map on [B*S, d].
    key = jnp.stack([
        LinearBN(d, c, relu=True, name=f'key_layer{i}')(_gap(s), train)
        for i, (s, c) in enumerate(zip(student, self.student_channels))], axis=1)
    bilinear_key = LinearBN(d * n_t, d, relu=False, name='bilinear')(
        key.reshape(batch_size * n_s, d), train).reshape(batch_size, n_s, n_t, d)
    p_t = self.param('p_t', xavier_normal, (n_t, d), jnp.float32)
    p_s = self.param('p_s', xavier_normal, (n_s, d), jnp.float32)
    return Attention(losses.afd_attention(bilinear_key, query, p_t, p_s))


def _connector(ctx, student, teacher, *, qk_dim):
  del ctx
  for side, shapes in (('student', student), ('teacher', teacher)):
    if not shapes or any(len(s.shape) != 4 for s in shapes):
      raise KdjaxError(f'losses.afd.{side}_taps must name one or more [B, H, W, C] feature maps '
                       f'(e.g. block0, block1, ...); got shapes {[s.shape for s in shapes]}')
  return AFDAttention(student_channels=tuple(int(s.shape[-1]) for s in student),
                      teacher_channels=tuple(int(t.shape[-1]) for t in teacher), qk_dim=qk_dim)


AFD = register(Method(
    name='afd', doc='Show, Attend and Distill: attention over student taps per teacher tap; '
                    'the term weight is w_afd (50 ImageNet, 200 CIFAR)',
    taps=dict(student_taps=tuple(f'block{i}' for i in range(8)),
              teacher_taps=tuple(f'block{j}' for j in range(16))),
    reads=paired_taps, connector=_connector, connector_hparams=dict(qk_dim=128),
    loss=lambda x: losses.afd(list(x.student), list(x.teacher), x.connector.attention)))
