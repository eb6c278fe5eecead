"""The reproduction harness: run recipes over seeds, collect their results, tabulate and plot.

  entries = [harness.Entry('KD', 'kd_r32x4_r8x4'), harness.Entry('DKD', 'dkd_r32x4_r8x4')]
  harness.run(entries, seeds=(0, 1, 2), root='runs/cifar')          # or harness.commands(...)
  summary = harness.summarize(entries, harness.collect(entries, (0, 1, 2), 'runs/cifar'))
  print(harness.markdown(summary))

Each (recipe, overrides, seed) trains once, in `<root>/<run name>/seed<S>`, through the same
trainer as the CLI, so a run can also be made on a cluster with the printed command and collected
here afterwards. A result is the last held-out eval line of the run in its metrics.jsonl (the
model an entry names: the exported student by default, or the teacher); the summary gives mean,
standard deviation (ddof 1) and n over seeds next to the expected number and its source. Every
run's provenance (commit, config, packages, devices, wall time) is in its provenance.json.
`experiments/reproduce.py` is the command line over this module.
"""

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import time

from kdjax import provenance
from kdjax import recipes
from kdjax.errors import KdjaxError
from kdjax.metrics import read_records

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row of a results table.

  label: the row's name. recipe: 'name' or 'name:arg' (configs/name.py). overrides: dotted config
  keys set on top (`{'losses.kd.temperature': 2.0}`). model: which eval line is the result
  ('student', 'student_ema', 'peer', 'teacher'; None = the network the run exports).
  expected, source: the number this row should reach (top-1 in %) and where it comes from.
  """
  label: str
  recipe: str
  overrides: tuple = ()  # ((key, value), ...); a dict is accepted and frozen
  model: str | None = None
  expected: float | None = None
  source: str = ''

  def __post_init__(self):
    if isinstance(self.overrides, dict):
      object.__setattr__(self, 'overrides', tuple(sorted(self.overrides.items())))


_EXPECTED = re.compile(r'Expected (?:held-out )?top-1:\s*([0-9]+(?:\.[0-9]+)?)%?\s*(?:\(([^)]*)\))?')


def expected_from_docstring(recipe: str) -> tuple[float | None, str]:
  """(top-1 in %, source) from the recipe's docstring line 'Expected top-1: 76.32 (source)';
  (None, '') when the docstring gives no number."""
  doc = ' '.join(recipes.docstring(recipe.split(':')[0]).split())
  match = _EXPECTED.search(doc)
  if not match:
    return None, ''
  return float(match.group(1)), (match.group(2) or f'configs/{recipe.split(":")[0]}.py').strip()


def entries_from_recipes(specs) -> list[Entry]:
  """One entry per 'name[:arg]', labelled by the spec, expected from the recipe's docstring."""
  entries = []
  for spec in specs:
    expected, source = expected_from_docstring(spec)
    entries.append(Entry(spec, spec, expected=expected, source=source))
  return entries


def run_name(entry: Entry) -> str:
  """The run's folder name: the recipe ('dkd_r34_r18', 'digits_kd-baseline') plus a short hash
  of the overrides when there are any."""
  name = entry.recipe.replace(':', '-')
  if entry.overrides:
    name += '-' + _short_hash(json.dumps(entry.overrides))
  return name


def _short_hash(text):
  import hashlib  # pylint: disable=g-import-not-at-top
  return hashlib.sha256(text.encode()).hexdigest()[:8]


def workdir(entry: Entry, seed: int, root: str) -> str:
  return os.path.join(root, run_name(entry), f'seed{seed}')


def config_for(entry: Entry, seed: int, root: str = '.'):
  """The entry's recipe with its overrides and `seed`; '{root}' in a string override becomes
  `root` (a teacher cache kept beside the runs, say)."""
  name, _, arg = entry.recipe.partition(':')
  config = recipes.get(name, arg or None)
  with config.unlocked():
    config.seed = seed
    for key, value in entry.overrides:
      node = config
      *parents, leaf = key.split('.')
      for part in parents:
        node = node[part]
      if leaf not in node:
        raise KdjaxError(f"unknown config key '{key}' in the overrides of '{entry.label}'")
      node[leaf] = value.replace('{root}', root) if isinstance(value, str) else value
  return config


def _unique_runs(entries, seeds):
  """(entry, seed) once per run folder: a teacher row and a student row share their run."""
  seen, runs = set(), []
  for entry in entries:
    for seed in seeds:
      key = (run_name(entry), seed)
      if key not in seen:
        seen.add(key)
        runs.append((entry, seed))
  return runs


def commands(entries, seeds, root) -> list[str]:
  """The CLI command of every run, for a cluster's job scheduler."""
  out = []
  for entry, seed in _unique_runs(entries, seeds):
    name, _, arg = entry.recipe.partition(':')
    overrides = ''.join(
        ' ' + shlex.quote(f"--config.{k}={v.replace('{root}', root) if isinstance(v, str) else repr(v)}")
        for k, v in entry.overrides)
    out.append(f'python -m kdjax.main --config=configs/{name}.py{":" + arg if arg else ""} '
               f'{shlex.quote("--workdir=" + workdir(entry, seed, root))} --config.seed={seed}'
               f'{overrides}')
  return out


def is_finished(run_dir) -> bool:
  sessions = provenance.read(run_dir).get('sessions', [])
  return bool(sessions) and sessions[-1]['status'] == 'finished'


def run(entries, seeds, root, *, echo=print, progress='none'):
  """Trains every run that has not finished (an interrupted one resumes), in this process.

  A finished run goes through the trainer too, which refuses it when the recipe changed in a
  way that alters training (a stale result never enters a table) and otherwise returns its
  recorded result without training."""
  from kdjax import train  # pylint: disable=g-import-not-at-top
  runs = _unique_runs(entries, seeds)
  for i, (entry, seed) in enumerate(runs, 1):
    run_dir = workdir(entry, seed, root)
    done_before = is_finished(run_dir)
    start = time.perf_counter()
    result = train.train_and_evaluate(config_for(entry, seed, root), run_dir, progress=progress)
    what = 'done before, kept' if done_before else f'{time.perf_counter() - start:.0f} s'
    echo(f'[{i}/{len(runs)}] {entry.recipe}, seed {seed}: top-1 {100 * result["top1"]:.1f} '
         f'({what})')


def exported_model(run_dir) -> str:
  """The eval-line model name of the network a run exports: `config.export` ('student' unless
  a peer run says otherwise), with '_ema' when the run kept an EMA of the weights."""
  from kdjax import train  # pylint: disable=g-import-not-at-top
  config = provenance.read(run_dir).get('config')
  return train.exported_name(config) if config else 'student'  # the default export


def _result_line(records, model):
  """The last eval line of `model`, or None."""
  lines = [r for r in records if 'split' in r and r['model'] == model]
  return lines[-1] if lines else None


def collect(entries, seeds, root) -> list[dict]:
  """One row per (entry, seed) that has a result: label, seed, top1, top5 (in %), step, the
  run's provenance (commit, device kind and count, wall time) and its workdir."""
  rows = []
  for entry in entries:
    for seed in seeds:
      run_dir = workdir(entry, seed, root)
      line = _result_line(read_records(run_dir), entry.model or exported_model(run_dir))
      if line is None:
        continue
      record = provenance.read(run_dir)
      devices = record.get('devices', {})
      commits = sorted({s.get('git_commit') or '' for s in record.get('sessions', [])} - {''})
      rows.append({'label': entry.label, 'recipe': entry.recipe, 'seed': seed,
                   'model': line['model'], 'step': line['step'],
                   'top1': 100 * line['top1'], 'top5': 100 * line.get('top5', math.nan),
                   'finished': is_finished(run_dir),
                   # A run resumed on another commit names every commit it ran on.
                   'git_commit': ' '.join(commits) or record.get('git_commit'),
                   'device_kind': devices.get('kind'), 'device_count': devices.get('count'),
                   'wall_s': record.get('wall_s'),
                   'workdir': os.path.relpath(run_dir, root)})  # portable: inside root
  return rows


def _mean_std(values):
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
  return mean, std


def summarize(entries, rows) -> list[dict]:
  """One row per entry: n, top-1 and top-5 mean and std over seeds (%), expected and source.
  Entries without any result have n = 0."""
  summary = []
  for entry in entries:
    everything = [r for r in rows if r['label'] == entry.label]
    mine = [r for r in everything if r['finished']]  # A run still going is not a result.
    top1, top1_std = _mean_std([r['top1'] for r in mine]) if mine else (math.nan, math.nan)
    top5, top5_std = _mean_std([r['top5'] for r in mine]) if mine else (math.nan, math.nan)
    summary.append({'label': entry.label, 'recipe': entry.recipe, 'n': len(mine),
                    'unfinished': len(everything) - len(mine),
                    'seeds': ' '.join(str(r['seed']) for r in mine),
                    'top1_mean': top1, 'top1_std': top1_std, 'top5_mean': top5,
                    'top5_std': top5_std, 'expected_top1': entry.expected,
                    'source': entry.source})
  return summary


def _pm(mean, std):
  if math.isnan(mean):
    return '-'
  return f'{mean:.1f}' + (f' ± {std:.1f}' if not math.isnan(std) else '')


def markdown(summary) -> str:
  """The summary as a Markdown table (top-1 and top-5 as mean ± std over n seeds)."""
  lines = ['| run | top-1 (%) | top-5 (%) | n | expected top-1 (%) | source of expected |',
           '|---|---|---|---|---|---|']
  for s in summary:
    expected = s['expected_top1']
    expected = ('-' if expected is None else
                f'{expected:.1f}' if round(expected, 1) == expected else f'{expected:.2f}')
    n = f'{s["n"]} (+{s["unfinished"]} unfinished)' if s.get('unfinished') else s['n']
    lines.append(f'| {s["label"]} | {_pm(s["top1_mean"], s["top1_std"])} | '
                 f'{_pm(s["top5_mean"], s["top5_std"])} | {n} | {expected} | '
                 f'{s["source"] or "-"} |')
  return '\n'.join(lines)


def write_csv(rows, path):
  """Rows (of `collect` or `summarize`) as CSV, columns in their order."""
  if not rows:
    raise KdjaxError(f'nothing to write to {path}: no run has a result yet')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise KdjaxError("plots need matplotlib: pip install 'kdjax[experiments]'") from e
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  return pyplot


def plot_curves(entries, seeds, root, path):
  """Training loss and held-out top-1 against step, one line per run, coloured by entry."""
  plt = _pyplot()
  fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(11, 4))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, entry in enumerate(entries):
    for j, seed in enumerate(seeds):
      records = read_records(workdir(entry, seed, root))
      train_lines = [r for r in records if 'loss' in r and 'split' not in r]
      result = _result_line(records, entry.model or exported_model(workdir(entry, seed, root)))
      label = entry.label if j == 0 else None
      color = colors[i % len(colors)]
      if train_lines and entry.model != 'teacher':
        ax_loss.plot([r['step'] for r in train_lines], [r['loss'] for r in train_lines],
                     color=color, alpha=0.7, label=label)
      if result is not None:
        evals = [r for r in records if r.get('model') == result['model']]
        ax_top1.plot([r['step'] for r in evals], [100 * r['top1'] for r in evals],
                     marker='o', color=color, alpha=0.7, label=label)
  ax_loss.set(xlabel='step', ylabel='training loss', yscale='log', title='training loss')
  ax_top1.set(xlabel='step', ylabel='held-out top-1 (%)', title='held-out top-1')
  for ax in (ax_loss, ax_top1):
    ax.grid(alpha=0.3)
  ax_top1.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def plot_comparison(summary, path):
  """Mean held-out top-1 per entry (horizontal bars) with ±std error bars, n, and the expected
  number as a red mark."""
  import textwrap  # pylint: disable=g-import-not-at-top
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(summary)))
  ys = list(range(len(summary)))[::-1]  # the first entry on top
  means = [s['top1_mean'] for s in summary]
  stds = [0 if math.isnan(s['top1_std']) else s['top1_std'] for s in summary]
  ax.barh(ys, means, xerr=stds, capsize=5, color='tab:blue', alpha=0.8, label='measured ± std')
  expected = [(s['expected_top1'], y) for y, s in zip(ys, summary) if s['expected_top1']]
  if expected:
    ax.scatter(*zip(*expected), marker='|', s=400, color='tab:red', zorder=3, label='expected')
  ax.set_yticks(ys, ['\n'.join(textwrap.wrap(f'{s["label"]} (n={s["n"]})', 40)) for s in summary],
                fontsize=8)
  finite = [m for m in means if not math.isnan(m)]
  if finite:
    ax.set_xlim(max(0, min(finite) - 15), min(100, max(finite) + 5))
  ax.set(xlabel='held-out top-1 (%)')
  ax.grid(axis='x', alpha=0.3)
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # No timestamp in the file: the same results give the same bytes.
  fig.savefig(path, dpi=100, metadata={'Software': None})
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)


def report(entries, seeds, root, out_dir) -> str:
  """Collects, writes results.md, results.csv (one row per entry), runs.csv (one per run),
  and with matplotlib installed curves.png and comparison.png to `out_dir`; returns the
  Markdown table."""
  rows = collect(entries, seeds, root)
  if not rows:
    raise KdjaxError(f'no run under {root} has a result yet; train the runs first')
  summary = summarize(entries, rows)
  table = markdown(summary)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write(table + '\n')
  write_csv(summary, os.path.join(out_dir, 'results.csv'))
  write_csv(rows, os.path.join(out_dir, 'runs.csv'))
  try:
    plot_curves(entries, seeds, root, os.path.join(out_dir, 'curves.png'))
    plot_comparison(summary, os.path.join(out_dir, 'comparison.png'))
  except KdjaxError as e:  # matplotlib is optional: the table and CSVs are the results.
    log.warning('No plots: %s', e)
  return table


# The named tables of experiments/reproduce.py --experiment=NAME.
_MEASURED = 'measured with kdjax, {}'
QUICKSTART = (  # README's first table; python -m kdjax.quickstart runs the same.
    # The teacher's row reads the teacher eval line (step 0) of the distilled runs.
    Entry('teacher `digits_cnn` (shipped, trained on all 1,200 labels)', 'digits_kd',
          model='teacher', expected=98.0, source=_MEASURED.format('2026-11-23')),
    Entry('student `mlp32`, 100 labels, no teacher', 'digits_kd:baseline', expected=82.0,
          source=_MEASURED.format('2026-11-23')),
    Entry('student `mlp32`, 100 labels + KD from the teacher', 'digits_kd', expected=92.2,
          source=_MEASURED.format('2026-11-23')),
)
DIGITS_OFA = (  # README's CNN -> ViT table (configs/digits_ofa.py).
    Entry('`digits_vit`, no teacher', 'digits_ofa:baseline', expected=41.5,
          source=_MEASURED.format('2026-12-03')),
    Entry('OFA-KD as published (labelled rows only)', 'digits_ofa:labelled_only', expected=33.7,
          source=_MEASURED.format('2026-12-03')),
    Entry("OFA-KD, the teacher's class for unlabelled rows", 'digits_ofa', expected=85.1,
          source=_MEASURED.format('2026-12-03')),
    Entry('the same without the stage branches', 'digits_ofa:logits_only', expected=85.4,
          source=_MEASURED.format('2026-12-03')),
    Entry('KD (T=4) instead of OFA', 'digits_ofa:kd', expected=89.1,
          source=_MEASURED.format('2026-12-03')),
)
# The teacher cache against the online teacher: the quickstart's few-label KD with a random
# 8x8 crop of the 1-padded digits (9 possible views), so that views matter; the cached runs see
# 4 recorded views of each example, the online ones any of the 9 (docs/design.md#teacher-cache).
_CROP = {'input.train_augment': 'crop', 'input.crop_padding': 1}
DIGITS_CACHE = (
    Entry('KD, online teacher (random crop)', 'digits_kd', overrides=_CROP),
    Entry('KD, teacher cache: 4 views, full log-probabilities', 'digits_kd', overrides={
        **_CROP, 'teacher.cache': '{root}/teacher_cache_k4', 'teacher.cache_views': 4}),
    Entry('KD, teacher cache: 4 views, top-3 quantised', 'digits_kd', overrides={
        **_CROP, 'teacher.cache': '{root}/teacher_cache_k4_top3', 'teacher.cache_views': 4,
        'teacher.cache_top_k': 3}),
)
EXPERIMENTS = {'quickstart': QUICKSTART, 'digits_ofa': DIGITS_OFA, 'digits_cache': DIGITS_CACHE}
