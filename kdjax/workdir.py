"""One run per workdir, and resuming only the run that was started there.

  * `Lock`: `<workdir>/kdjax.lock` names the process that holds the workdir (host, pid, start
    time). A second run stops with one line naming it. A lock whose holder is gone (same host:
    its pid no longer runs; another host: no heartbeat for `STALE_AFTER_S`) is taken over.
  * `config_changes`: what differs between the config a checkpoint was written with and the
    config now, split into changes that alter the trajectory (refused unless
    `allow_config_change`) and harmless ones (applied and logged).

docs/design.md#failure-and-recovery describes the behaviour.
"""

import json
import logging
import os
import socket
import time

from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)  # kdjax.* loggers: shown at INFO (kdjax/logs.py)

LOCK_FILE = 'kdjax.lock'
STALE_AFTER_S = 600.0   # a holder on another host that has not touched the lock for this long

# Keys whose change does not alter the training trajectory: how often to log, evaluate and
# save, where the same data and weights live, how errors are handled. The student's starting
# weights (student.checkpoint, student.reset_classifier) only matter at step 0: a resumed run
# continues from its checkpoint's.
HARMLESS_KEYS = frozenset({
    'log_every_steps', 'eval_every_epochs', 'checkpoint_every_steps', 'keep_checkpoints',
    'eval_batch_size', 'data_dir', 'input.prefetch_batches', 'input.unlabeled.data_dir',
    'teacher.checkpoint', 'student.checkpoint', 'student.reset_classifier',
    'allow_config_change', 'on_nonfinite',
    'teacher.shard', 'student.shard',  # where arrays live, not what they hold
})
# The run's length: harmless unless the learning-rate schedule depends on it (cosine).
LENGTH_KEYS = frozenset({'num_epochs', 'num_train_steps'})


def _pid_running(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Runs under another user: alive.
    return True
  return True


class Lock:
  """An exclusive, stale-aware lock on a workdir (taken by process 0 of a run only)."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._held = False

  def acquire(self):
    me = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time()}
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if not self._stale(holder):
          since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
          raise KdjaxError(
              f"workdir '{os.path.dirname(self.path)}' is in use by pid {holder.get('pid')} on "
              f"{holder.get('host')} (since {since}); wait for that run to end or use another "
              f'--workdir (a lock left by a killed run is taken over automatically)') from None
        log.warning('Taking over the lock of a run that is gone (pid %s on %s): %s',
                        holder.get('pid'), holder.get('host'), self.path)
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self._held = True
      return self
    raise KdjaxError(f"could not take the lock '{self.path}'; another run is starting there")

  def _read(self):
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}  # Half-written by a process killed while taking it: stale below.

  def _stale(self, holder):
    if not holder:
      try:
        return time.time() - os.path.getmtime(self.path) > 5.0
      except OSError:
        return True
    if holder.get('host') == socket.gethostname():
      return not _pid_running(int(holder.get('pid', -1)))
    try:
      return time.time() - os.path.getmtime(self.path) > STALE_AFTER_S
    except OSError:
      return True

  def heartbeat(self):
    """Marks the holder alive (read by runs on other hosts)."""
    if self._held:
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self):
    if self._held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self._held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(_flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def _same(a, b):
  normal = lambda v: json.loads(json.dumps(v))  # tuples and lists compare alike
  return normal(a) == normal(b)


def config_changes(saved: dict, now: dict, defaults: dict | None = None) -> tuple[list, list]:
  """([trajectory changes], [harmless changes]) between two configs as JSON dicts, each
  change as 'key: old -> new'. A key the saved config lacks counts as its value in `defaults`
  (config_base's), so a key added to kdjax after the run started is no change at its default."""
  old, new = _flatten(saved), _flatten(now)
  old = {**{k: v for k, v in _flatten(defaults or {}).items() if k in new}, **old}
  cosine = new.get('optimizer.schedule') == 'cosine' or old.get('optimizer.schedule') == 'cosine'
  trajectory, harmless = [], []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, '<absent>'), new.get(key, '<absent>')
    if _same(a, b):
      continue
    change = f'{key}: {json.dumps(a)} -> {json.dumps(b)}'
    if key in HARMLESS_KEYS or (key in LENGTH_KEYS and not cosine):
      harmless.append(change)
    else:
      trajectory.append(change)
  return trajectory, harmless
