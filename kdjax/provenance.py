"""Where a result came from: `<workdir>/provenance.json`, written by every run.

It holds what is needed to trust and repeat a number: the kdjax git commit (when kdjax runs from
a checkout), the full config, the package versions, the devices, and one entry per session of
the run (a resumed run has several) with its steps and wall time.
"""

import datetime
import json
import os
import platform
import subprocess

import jax

from kdjax import checkpoint

FILE = 'provenance.json'


def git_commit() -> str | None:
  """The commit of the kdjax source in use, with '-dirty' if it has uncommitted changes; None
  outside a git checkout (an installed wheel)."""
  source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.exists(os.path.join(source, '.git')):
    return None
  try:
    commit = subprocess.run(['git', '-C', source, 'rev-parse', 'HEAD'], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', source, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ('-dirty' if dirty else '')


def devices() -> dict:
  """The devices the run used: kind ('cpu', 'NVIDIA H100 80GB HBM3', 'TPU v5 lite', ...)."""
  return {'platform': jax.default_backend(), 'kind': jax.devices()[0].device_kind,
          'count': jax.device_count(), 'processes': jax.process_count()}


def read(workdir) -> dict:
  """The provenance record of a workdir ({} when it has none)."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def record_session(workdir, config, *, start_step, end_step, wall_s, status, commit):
  """Adds one session (start and end step, wall time, 'finished' / 'preempted' / 'failed') to
  `<workdir>/provenance.json` and refreshes the run-wide fields; `commit` is `git_commit()` as
  the session started. Process 0 only."""
  if jax.process_index() != 0:
    return
  record = read(workdir)
  sessions = record.get('sessions', []) + [{
      'start_step': int(start_step), 'end_step': int(end_step), 'wall_s': round(wall_s, 3),
      'status': status, 'host': platform.node(), 'git_commit': commit,
      'ended': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}]
  record.update(
      git_commit=commit, packages=checkpoint.package_versions(),
      python=platform.python_version(), devices=devices(),
      config=json.loads(config.to_json_best_effort()), sessions=sessions,
      wall_s=round(sum(s['wall_s'] for s in sessions), 3))
  path = os.path.join(workdir, FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=1)
  os.replace(path + '.tmp', path)
