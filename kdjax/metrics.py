"""Metric outputs: `<workdir>/metrics.jsonl`, TensorBoard summaries (CLU), and a progress line.

Only process 0 writes; the other processes of a multi-host run only log.
"""

import datetime
import json
import os
import time

from absl import logging
from clu import metric_writers
import jax


class Writer:
  """One JSON object per line in metrics.jsonl plus the same scalars in TensorBoard."""

  def __init__(self, workdir, resume_step=0):
    self._main = jax.process_index() == 0
    self._jsonl = None
    if self._main:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      if os.path.exists(path):
        _drop_lines_after(path, resume_step)
      self._jsonl = open(path, 'a')
    self._tb = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=not self._main, asynchronous=False)

  def _line(self, record):
    if self._jsonl:
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()

  def write_train(self, step, scalars):
    """`scalars` holds loss, loss/<term>, lr, examples_per_sec."""
    self._line({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
    self._tb.write_scalars(int(step), {f'train/{k}': v for k, v in scalars.items()})

  def write_eval(self, step, split, model, result):
    """`result` holds top1, top5 (fractions) and, for a distilled student, agreement and KL."""
    self._line({'step': int(step), 'split': split, 'model': model,
                **{k: float(v) for k, v in result.items()}})
    self._tb.write_scalars(int(step), {f'eval_{model}/{k}': v for k, v in result.items()})
    logging.info('eval %s @ step %d on %s: %s', model, step, split,
                 ', '.join(f'{k} {v:.4f}' for k, v in result.items()))

  def close(self):
    self._tb.flush()
    self._tb.close()
    if self._jsonl:
      self._jsonl.close()


def _drop_lines_after(path, step):
  """Keeps the lines up to `step` (none for a fresh start): a resumed run rewrites what the
  interrupted one logged after its last checkpoint, so every step appears once. A line cut off
  by a hard kill is dropped too."""
  def keep(line):
    try:
      return json.loads(line)['step'] <= step and step > 0
    except (ValueError, KeyError, TypeError):
      return False
  with open(path) as f:
    lines = [line for line in f if keep(line)]
  with open(path, 'w') as f:
    f.writelines(lines)


class Progress:
  """Logs `step 120/1500 (8%) | loss 0.91 | ... | 5,200 img/s | ETA 0:01:04`."""

  def __init__(self, total_steps, start_step):
    self.total, self.start = total_steps, start_step
    self.t0 = time.perf_counter()

  def log(self, step, scalars):
    done = step - self.start
    elapsed = time.perf_counter() - self.t0
    eta = elapsed / max(done, 1) * (self.total - step)
    terms = ' | '.join(f'{k} {v:.4g}' for k, v in scalars.items()
                       if k.startswith('loss') or k == 'lr')
    logging.info('step %d/%d (%.0f%%) | %s | %.1f img/s | ETA %s', step, self.total,
                 100 * step / self.total, terms, scalars.get('examples_per_sec', 0.0),
                 datetime.timedelta(seconds=round(eta)))
