r"""Times, and optionally profiles, one network's plain train step or forward pass on XLA:CPU.

  python benchmarks/profile_step.py --what=student --model=resnet18      # images/s
  python benchmarks/profile_step.py --what=teacher --model=resnet34 [--bf16]
  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \
      python benchmarks/profile_step.py --what=student --trace   # + time per kind of XLA thunk
  python benchmarks/profile_step.py --what=student --convs   # + its convolutions alone

The step is SGD with momentum on softmax cross-entropy (no kdjax trainer around it), batch
--batch at --image_size, one fixed random batch: what docs/design.md#speed compares across XLA
options (set them in XLA_FLAGS; `import kdjax` adds kdjax's CPU defaults unless
KDJAX_XLA_DEFAULTS=0) and code versions. --trace records three steps with the JAX profiler and
prints, per kind of XLA thunk (fusion names without their numbers), the milliseconds of thread
time per step, summed over XLA's threads. --convs times every convolution of the step (forward,
and in a train step the weight- and input-gradient convolutions autodiff made, each read off the
step's jaxpr and run alone with its shapes and settings, relayouts included) and prints their
sum: the images/s the step would reach if everything but its convolutions were free.
"""

import argparse
import collections
import glob
import json
import os
import re
import tempfile
import time

import kdjax  # noqa: F401  (its XLA:CPU defaults, before JAX starts)
import jax
import jax.extend.core  # noqa: F401  (jaxprs_in_params)
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import models


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--what', choices=('student', 'teacher'), default='student')
  parser.add_argument('--model', default='resnet18')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image_size', type=int, default=112)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--bf16', action='store_true', help='bfloat16 compute (teacher)')
  parser.add_argument('--trace', action='store_true')
  parser.add_argument('--convs', action='store_true', help='time the convolutions alone')
  args = parser.parse_args()

  dtype = jnp.bfloat16 if args.bf16 else jnp.float32
  model = models.get_model(args.model, num_classes=1000, dtype=dtype)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(args.batch, args.image_size, args.image_size, 3), jnp.float32)
  y = jnp.asarray(rng.randint(0, 1000, args.batch))
  variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False))()
  tx = optax.sgd(0.1, momentum=0.9)

  def loss_fn(params, batch_stats):
    logits, new = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                              mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

  @jax.jit
  def train_step(state):
    params, batch_stats, opt_state = state
    (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new['batch_stats'], opt_state

  forward = jax.jit(lambda v: model.apply(v, x, train=False))
  state = [(variables['params'], variables['batch_stats'], tx.init(variables['params']))]

  def one():
    if args.what == 'teacher':
      return forward(variables)
    state[0] = train_step(state[0])
    return state[0]

  for _ in range(2):
    jax.block_until_ready(one())
  start = time.perf_counter()
  for _ in range(args.steps):
    out = one()
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / args.steps
  print(json.dumps({'what': args.what, 'model': args.model, 'bf16': args.bf16,
                    'xla_flags': os.environ.get('XLA_FLAGS', ''),
                    'images_per_s': args.batch / seconds}))
  if args.trace:
    print_thunk_times(one)
  if args.convs:
    fn, fn_args = ((lambda v: model.apply(v, x, train=False)), (variables,)) \
        if args.what == 'teacher' else (train_step.__wrapped__, (state[0],))
    ms = conv_milliseconds(jax.make_jaxpr(fn)(*fn_args).jaxpr, args.steps)
    print(json.dumps({'convolutions': len(ms), 'conv_ms': sum(ms),
                      'images_per_s_if_only_convs': args.batch / (sum(ms) / 1e3)}))


def conv_milliseconds(jaxpr, steps):
  """Milliseconds of each conv_general_dilated in `jaxpr` (and the jaxprs it calls), each
  compiled alone and run on random operands of its shapes."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'conv_general_dilated':
        found.append(eqn)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr)
  rng, cache, out = np.random.RandomState(0), {}, []
  for eqn in found:
    lhs, rhs = (v.aval for v in eqn.invars)
    key = (lhs.shape, rhs.shape, str(sorted(eqn.params.items(), key=lambda kv: kv[0])))
    if key not in cache:
      conv = jax.jit(lambda a, b, p=eqn.params: jax.lax.conv_general_dilated_p.bind(a, b, **p))
      a = jnp.asarray(rng.randn(*lhs.shape), lhs.dtype)
      b = jnp.asarray(rng.randn(*rhs.shape), rhs.dtype)
      for _ in range(2):
        jax.block_until_ready(conv(a, b))
      start = time.perf_counter()
      for _ in range(steps):
        r = conv(a, b)
      jax.block_until_ready(r)
      cache[key] = (time.perf_counter() - start) / steps * 1e3
    out.append(cache[key])
  return out


def print_thunk_times(fn, steps=3):
  folder = tempfile.mkdtemp(prefix='kdjax_trace_')
  with jax.profiler.trace(folder):
    for _ in range(steps):
      out = fn()
    jax.block_until_ready(out)
  path = glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)[0]
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if 'XLAEigen' not in line.name:  # XLA:CPU's worker threads run the thunks
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool')):
          totals[re.sub(r'[._]\d+$', '', event.name)] += event.duration_ns
  for kind, ns in totals.most_common(15):
    print(f'{ns / steps / 1e6:9.1f} ms/step  {kind}')


if __name__ == '__main__':
  main()
