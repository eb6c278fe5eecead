"""Metric outputs: `<workdir>/metrics.jsonl`, TensorBoard summaries (CLU), and a progress line.

Only process 0 writes; the other processes of a multi-host run only log.
"""

import datetime
import json
import logging
import os
import sys
import time

from clu import metric_writers
import jax

log = logging.getLogger(__name__)  # kdjax.* loggers: shown at INFO (kdjax/logs.py)


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
    log.info('eval %s @ step %d on %s: %s', model, step, split,
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


def read_records(workdir) -> list[dict]:
  """Every complete record of `<workdir>/metrics.jsonl`, in order ([] before the first)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:  # A line cut off by a hard kill (the resumed run rewrites it).
        continue
  return records


def in_notebook() -> bool:
  """Whether this runs inside a Jupyter or Colab kernel."""
  shell = sys.modules.get('IPython')
  shell = shell.get_ipython() if shell is not None and hasattr(shell, 'get_ipython') else None
  return shell is not None and 'IPKernelApp' in getattr(shell, 'config', {})


def progress_mode(mode: str) -> str:
  """'log', 'bar' or 'none'; 'auto' is the bar in a notebook kernel, else the log lines."""
  if mode == 'auto':
    return 'bar' if in_notebook() else 'log'
  if mode not in ('log', 'bar', 'none'):
    raise ValueError(f"progress must be 'auto', 'log', 'bar' or 'none', not {mode!r}")
  return mode


class Progress:
  """Shows how far training is: a log line `step 120/1500 (8%) | loss 0.91 | ... | 5,200 img/s |
  ETA 0:01:04` at every log step ('log'), or a progress bar (tqdm; a widget in notebooks) that
  moves every step and shows the same values ('bar'). Process 0 only for the bar."""

  def __init__(self, total_steps, start_step, mode='log'):
    self.total, self.start = total_steps, start_step
    self.t0 = time.perf_counter()
    self.mode = mode
    self._bar = None
    if mode == 'bar' and jax.process_index() == 0:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step',
                            desc='training', dynamic_ncols=True)

  def step(self, step):
    """Called every step; moves the bar."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def log(self, step, scalars):
    """Called every log step with the means since the last one."""
    terms = {k: v for k, v in scalars.items() if k.startswith('loss') or k == 'lr'}
    if self._bar is not None:
      self.step(step)
      self._bar.set_postfix({k: f'{v:.4g}' for k, v in terms.items()}, refresh=True)
      return
    if self.mode != 'log':
      return
    done = step - self.start
    elapsed = time.perf_counter() - self.t0
    eta = elapsed / max(done, 1) * (self.total - step)
    log.info('step %d/%d (%.0f%%) | %s | %.1f img/s | ETA %s', step, self.total,
             100 * step / self.total, ' | '.join(f'{k} {v:.4g}' for k, v in terms.items()),
             scalars.get('examples_per_sec', 0.0), datetime.timedelta(seconds=round(eta)))

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None
