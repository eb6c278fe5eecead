"""DOT, "A Distillation-Oriented Trainer", Zhao et al. ICCV 2023 (docs/methods.md#dot).

Not a loss: an optimizer. SGD keeps two momentum buffers, one for the gradient of the task
loss (the `ce` terms) with momentum `m - delta`, one for the gradient of the distillation
terms with `m + delta`, and steps along their sum; the distillation gradient thus dominates the
update direction. `dot(...)` is an optax transformation whose `update` takes both gradients,
`{'task': g_task, 'distill': g_distill}`; the trainer sees that it wants them
(`takes_two_gradients`) and computes both from one forward pass (`value_and_two_grads`: one
`jax.vjp`, its pullback applied to two cotangents at once). Chosen with
`optimizer.name='dot'` and `optimizer.dot_delta`.

Reference: megvii-research/mdistiller `mdistiller/engine/dot.py` (`dot`,
`DistillationOrientedTrainer`) and `mdistiller/engine/trainer.py` (`DOT`).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

# The terms of these methods make the task loss; every other term is distillation.
TASK_METHODS = ('ce',)


def is_task(term) -> bool:
  """Whether a term (`methods.Term`) belongs to the task loss (its method is in TASK_METHODS)."""
  return term.method.name in TASK_METHODS


class DotState(NamedTuple):
  count: jax.Array          # int32: updates made
  task_momentum: Any        # params-shaped
  distill_momentum: Any     # params-shaped


class TwoGradientTransformation(optax.GradientTransformation):
  """An optax transformation whose `update(grads, state, params)` takes
  `grads = {'task': tree, 'distill': tree}` (both shaped like `params`)."""


def takes_two_gradients(tx) -> bool:
  """Whether `tx` wants the task and distillation gradients apart (`dot`)."""
  return isinstance(tx, TwoGradientTransformation)


def dot(learning_rate, *, momentum=0.9, delta=0.075, weight_decay=0.0,
        distill_only_keys=('connectors',)) -> TwoGradientTransformation:
  r"""DOT's update, with PyTorch SGD semantics (weight decay added to the gradient).

  For a parameter ``p`` that both losses reach (every student and peer parameter), with
  ``m_task = momentum - delta`` and ``m_kd = momentum + delta``:

  .. math::
    b_{task} \leftarrow m_{task} b_{task} + g_{task} + \lambda p, \qquad
    b_{kd} \leftarrow m_{kd} b_{kd} + g_{kd}, \qquad
    p \leftarrow p - \eta_t (b_{task} + b_{kd})

  with both buffers starting at zero (the reference's first step copies the gradient: the
  same). Weight decay ``lambda`` goes into the task buffer only, as in the reference. The
  parameters under the top-level keys `distill_only_keys` (the connectors, which only the
  distillation terms reach) get the reference's treatment of parameters without a task
  gradient: ``b_kd <- (m_task + m_kd)/2 b_kd + g_kd + lambda p`` and ``p <- p - eta_t b_kd``,
  where the first step takes ``g_kd`` alone (the reference copies the raw gradient into a new
  buffer before it adds the decay). With ``delta = 0`` the update is SGD with momentum on
  the summed gradient.

  Args:
    learning_rate: a float or an optax schedule of the update count.
    momentum: ``m``. delta: ``m_task = m - delta``, ``m_kd = m + delta`` (mdistiller: 0.075
      CIFAR-100, 0.09 ImageNet). weight_decay: ``lambda``.
    distill_only_keys: top-level keys of the params dict reached by the distillation terms only.

  Returns:
    a `TwoGradientTransformation`: `update({'task': g_t, 'distill': g_kd}, state, params)`.
  """
  m_task, m_kd = momentum - delta, momentum + delta
  if m_task < 0:
    raise ValueError(f'DOT needs momentum - delta >= 0, got {momentum} - {delta}')
  m_mean = (m_task + m_kd) / 2.0
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return DotState(count=jnp.zeros((), jnp.int32), task_momentum=zeros(),
                    distill_momentum=zeros())

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('dot needs the params (weight decay)')
    first = state.count == 0
    lr = schedule(state.count)
    new_task, new_kd, updates = {}, {}, {}
    for key in params:
      args = (grads['task'][key], grads['distill'][key], params[key],
              state.task_momentum[key], state.distill_momentum[key])
      if key in distill_only_keys:
        def leaf(g_t, g_kd, p, b_t, b_kd):
          del g_t
          b_kd = jnp.where(first, g_kd, m_mean * b_kd + g_kd + weight_decay * p)
          return b_t, b_kd, -lr * b_kd
      else:
        def leaf(g_t, g_kd, p, b_t, b_kd):
          b_t = m_task * b_t + g_t + weight_decay * p
          b_kd = m_kd * b_kd + g_kd
          return b_t, b_kd, -lr * (b_t + b_kd)
      out = jax.tree.map(leaf, *args)
      pick = lambda i, a=args[2], o=out: jax.tree.map(lambda _, r: r[i], a, o)
      new_task[key], new_kd[key], updates[key] = pick(0), pick(1), pick(2)
    return updates, DotState(count=state.count + 1, task_momentum=new_task,
                             distill_momentum=new_kd)

  return TwoGradientTransformation(init, update)


def value_and_two_grads(loss_fn: Callable, params, is_task: Callable[[str], bool]):
  """`loss_fn(params) -> (total, aux)` whose `aux[-1]` is {term: weighted value}: returns
  `((total, aux), {'task': grad, 'distill': grad})`, the task gradient that of the terms where
  `is_task(term)`, the distillation gradient that of the others, from one forward pass and one
  pullback applied to both cotangents (vmapped)."""
  def parts(p):
    total, aux = loss_fn(p)
    weighted = aux[-1]
    task = sum((v for k, v in weighted.items() if is_task(k)), jnp.zeros((), jnp.float32))
    distill = sum((v for k, v in weighted.items() if not is_task(k)), jnp.zeros((), jnp.float32))
    return jnp.stack([task, distill]), (total, aux)

  out, pullback, (total, aux) = jax.vjp(parts, params, has_aux=True)
  (both,) = jax.vmap(pullback)(jnp.eye(2, dtype=out.dtype))
  grads = {'task': jax.tree.map(lambda g: g[0], both),
           'distill': jax.tree.map(lambda g: g[1], both)}
  return (total, aux), grads
