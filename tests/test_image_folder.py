"""`dataset='folder:/path'` (kdjax/data/image_folder.py) and `python -m kdjax.prepare`.

Tiny PNG folders written to tmp_path: 3 classes of 12x12 images (a few 10x12), flat (holdout)
or with split folders, RGB or grayscale. Nothing touches the network.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

import conftest
from kdjax.data import image_folder
from kdjax.data import input_pipeline
from kdjax.errors import KdjaxError

CLASSES = ('cat', 'dog', 'eel')


def _write(path, rng, size=(12, 12), gray=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = size if gray else size + (3,)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def make_flat(root, per_class=10, seed=0):
  """root/<class>/<i>.png, every third image 10x12; plus a stray text file."""
  rng = np.random.default_rng(seed)
  for c in CLASSES:
    for i in range(per_class):
      _write(os.path.join(root, c, f'{i}.png'), rng, (12, 12) if i % 3 else (10, 12))
  with open(os.path.join(root, 'notes.txt'), 'w') as f:
    f.write('not an image')
  return str(root)


def make_split(root, gray=True, seed=1):
  """root/train/<class>/ (6 each) and root/val/<class>/ (2 each), all 12x12."""
  rng = np.random.default_rng(seed)
  for split, n in (('train', 6), ('val', 2)):
    for c in CLASSES:
      for i in range(n):
        _write(os.path.join(root, split, c, f'{i}.png'), rng, gray=gray)
  return str(root)


def _config(root, data_dir, arg='smoke'):
  config, _ = conftest.load_recipe('folder_kd', arg)
  config.dataset = f'folder:{root}'
  config.data_dir = str(data_dir)
  return config


def test_flat_folder_holds_out_a_stable_stratified_share(tmp_path):
  root = make_flat(tmp_path / 'imgs')
  builder, summary = image_folder.prepare(f'folder:{root}', str(tmp_path / 'dd'), 0.2)
  assert summary['classes'] == list(CLASSES) and summary['held_out']
  assert summary['counts'] == {'train': [8, 8, 8], 'validation': [2, 2, 2]}
  assert summary['channels'] == 3 and summary['image_size'] is None  # sizes vary
  assert builder.info.features['label'].names == list(CLASSES)
  assert builder.info.features['image'].shape == (None, None, 3)
  ids = {s: sorted(int(x['id']) for x in builder.as_data_source(split=s))
         for s in ('train', 'validation')}
  assert ids['train'] + ids['validation'] == list(range(30))  # unique int ids over splits
  again, summary2 = image_folder.prepare(f'folder:{root}', str(tmp_path / 'dd'), 0.2)
  assert summary2 == summary  # not converted again
  # The holdout depends on the paths only: adding an image moves no other file.
  paths = [p for p, _, _ in image_folder.listing(root)]
  held = set(image_folder.scan(root, paths, 0.2).splits['validation'])
  new = os.path.join('cat', '99.png')
  after = set(image_folder.scan(root, paths + [new], 0.2).splits['validation'])
  assert {f for f in after if f[1] != 0} == {f for f in held if f[1] != 0}
  assert {f for f in after if f[1] == 0} <= {f for f in held if f[1] == 0} | {(new, 0)}
  # Training ids interleave the classes: any prefix keeps about their proportions.
  first = image_folder.scan(root, paths, 0.2).splits['train'][:6]
  assert sorted(c for _, c in first) == [0, 0, 1, 1, 2, 2]


def test_split_folders_grayscale_and_changed_folder(tmp_path):
  root = make_split(tmp_path / 'imgs')
  builder, summary = image_folder.prepare(f'folder:{root}', str(tmp_path / 'dd'))
  assert set(builder.info.splits) == {'train', 'val'} and not summary['held_out']
  assert summary['counts'] == {'train': [6, 6, 6], 'val': [2, 2, 2]}
  assert builder.info.features['image'].shape == (12, 12, 1)
  assert image_folder.default_eval_split(builder) == 'val'
  _write(os.path.join(root, 'train', 'dog', 'new.png'), np.random.default_rng(5), gray=True)
  _, changed = image_folder.prepare(f'folder:{root}', str(tmp_path / 'dd'))
  assert changed['stored'] != summary['stored'] and changed['counts']['train'] == [6, 7, 6]
  # One RGB image makes the whole dataset RGB.
  _write(os.path.join(root, 'val', 'eel', 'rgb.png'), np.random.default_rng(6))
  builder, rgb = image_folder.prepare(f'folder:{root}', str(tmp_path / 'dd'))
  assert rgb['channels'] == 3 and builder.info.features['image'].shape == (12, 12, 3)


def test_mean_std_computed_and_written_into_the_config(tmp_path):
  root = make_flat(tmp_path / 'imgs')
  config = _config(root, tmp_path / 'dd')
  assert tuple(config.input.mean) == () and config.input.eval_split == ''
  builder = input_pipeline.get_builder(config)
  train = image_folder.scan(root, [p for p, _, _ in image_folder.listing(root)],
                            config.input.holdout_fraction).splits['train']
  pixels = np.concatenate([np.asarray(Image.open(os.path.join(root, p)).convert('RGB'),
                                      np.float64).reshape(-1, 3) / 255 for p, _ in train])
  with open(os.path.join(image_folder.prepare(config.dataset, config.data_dir)[1]['stored'],
                         image_folder.SUMMARY_FILE)) as f:
    stored = json.load(f)
  np.testing.assert_allclose(stored['mean'], pixels.mean(0), rtol=0, atol=1e-12)
  np.testing.assert_allclose(stored['std'], pixels.std(0), rtol=0, atol=1e-12)
  np.testing.assert_allclose(config.input.mean, pixels.mean(0), atol=1e-6)
  np.testing.assert_allclose(config.input.std, pixels.std(0), atol=1e-6)
  assert config.input.eval_split == 'validation'
  # The usual pipeline: exact eval (every held-out image once), few labels through `id`.
  input_pipeline.check_options(config, builder, None)
  config.input.num_labeled = 6
  batch = next(input_pipeline.train_batches(config, builder, start_step=0, local_batch_size=8,
                                            steps_per_epoch=3))
  assert batch['image'].shape == (8, 16, 16, 3)
  assert np.all((batch['label'] >= 0) == (batch['id'] < 6))
  masks = [b['mask'] for b in input_pipeline.eval_batches(config, builder, local_batch_size=4)]
  assert sum(m.sum() for m in masks) == 3  # 10% of 10 per class, at least 1


def test_no_resizing_op_on_varying_sizes_says_which_op(tmp_path):
  config = _config(make_flat(tmp_path / 'imgs'), tmp_path / 'dd')
  config.input.train_augment = 'none'
  builder = input_pipeline.get_builder(config)
  with pytest.raises(KdjaxError, match='vary in size.*random_resized_crop_flip'):
    input_pipeline.check_options(config, builder, None)
  config.input.train_augment = 'inception_crop_flip'
  with pytest.raises(KdjaxError, match='stored as PNG.*random_resized_crop_flip'):
    input_pipeline.check_options(config, builder, None)


def test_cli_prepare_train_evaluate_export(tmp_path):
  root = make_flat(tmp_path / 'imgs')
  data_dir, workdir = str(tmp_path / 'dd'), str(tmp_path / 'w')
  proc = conftest.run_cli('kdjax.prepare', f'folder:{root}', f'--data_dir={data_dir}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '3 classes, 3 channel(s)' in proc.stdout and 'train 27, validation 3' in proc.stdout
  assert 'mean (' in proc.stdout and 'std (' in proc.stdout
  proc = conftest.run_cli('kdjax.main', '--config=configs/folder_kd.py:smoke',
                          f'--workdir={workdir}', f'--config.dataset=folder:{root}',
                          f'--config.data_dir={data_dir}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  evals = [m for m in lines if m.get('split') == 'validation' and m.get('model') == 'student']
  assert evals and evals[-1]['step'] == 4
  proc = conftest.run_cli('kdjax.export', f'--workdir={workdir}', f'--output={tmp_path / "e"}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / 'e' / 'kdjax_export.json').exists()


@pytest.mark.parametrize('name, fragment', [
    ('imagenet2012', 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'),
    ('no_such_dataset', "unknown TFDS dataset 'no_such_dataset'"),
])
def test_prepare_fails_in_one_line_without_network(tmp_path, name, fragment):
  proc = conftest.run_cli('kdjax.prepare', name, f'--data_dir={tmp_path}')
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith('kdjax: error:')]
  assert len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
  assert not list(tmp_path.glob('**/*.tfrecord*')) and not (tmp_path / 'downloads').exists()


def test_a_stray_folder_without_images_is_ignored_and_an_ambiguous_one_refused(tmp_path):
  root = make_split(tmp_path / 'zip')
  os.makedirs(tmp_path / 'zip' / '__MACOSX' / 'train')
  with open(tmp_path / 'zip' / '__MACOSX' / 'train' / '._0.png', 'w') as f:
    f.write('resource fork, not an image')
  assert image_folder._has_split_folders(root)  # pylint: disable=protected-access
  _write(os.path.join(root, 'extra', 'a', '0.png'), np.random.default_rng(0))
  with pytest.raises(KdjaxError, match=r"has train/ and also \['extra'\]"):
    image_folder._has_split_folders(root)  # pylint: disable=protected-access


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
  wide = np.array([[0, 1000, 30000, 65535]], np.uint16)
  Image.fromarray(wide).save(tmp_path / 'deep.png')
  pixels = image_folder.load_pixels(str(tmp_path), 'deep.png', 1)
  np.testing.assert_array_equal(pixels[..., 0], np.round(wide / 65535 * 255).astype(np.uint8))
  assert image_folder.load_pixels(str(tmp_path), 'deep.png', 3).shape == (1, 4, 3)
