"""The teacher-output cache (kdjax/cache.py): record layout and FKD quantisation, the views'
draws, replay (the student sees exactly the view the teacher's logits were recorded on), exact
resume, the run itself, and the refusals."""

import json
import os

import jax
import numpy as np
import pytest

from kdjax import cache
from kdjax import train
from kdjax.data import input_pipeline
from kdjax.data import on_device
from kdjax.data import preprocess
from kdjax.errors import KdjaxError
from kdjax.quickstart import load_recipe

VIEWS = 3


def _digits_config(data_dir, tmp, **overrides):
  """The quickstart recipe (:smoke, 20 steps) with a replayable random crop of the 8x8 digits."""
  config = load_recipe('smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.input.train_augment = 'crop'
    config.input.crop_padding = 1
    config.teacher.cache = str(tmp / 'cache')
    config.teacher.cache_views = VIEWS
    for key, value in overrides.items():
      config.update_from_flattened_dict({key: value})
  return config


@pytest.fixture(scope='module')
def made(digits_data_dir, tmp_path_factory):
  """(config, setup, store) of a 3-view cache of the digits, recorded once for the module."""
  config = _digits_config(digits_data_dir, tmp_path_factory.mktemp('cache'))
  setup = train.build(config)
  cache.build(config, setup)
  store = cache.Store(config.teacher.cache)
  store.check(config, setup)
  return config, setup, store


def test_layout_round_trip_full_and_top_k():
  rng = np.random.default_rng(0)
  windows = rng.integers(0, 500, (4, 5)).astype(np.int32)
  logp = cache.log_softmax(rng.normal(0, 3, (4, 20)))
  full = cache.Layout(4, 20)
  record = full.encode(windows, logp)
  assert len(record) == full.record_bytes == 4 * (20 + 40)
  got_windows, got = full.decode([record, record], np.array([1, 3]))
  np.testing.assert_array_equal(got_windows, windows[[1, 3]])
  np.testing.assert_allclose(got, logp[[1, 3]], atol=2e-2)  # float16
  top = cache.Layout(4, 20, top_k=5)
  record = top.encode(windows, logp)
  assert len(record) == top.record_bytes == 4 * (20 + 4 * 5 + 2)
  _, got = top.decode([record], np.array([2]))
  p, q = np.exp(logp[2]), np.exp(got[0])
  best = np.argsort(-p)[:5]
  np.testing.assert_allclose(q[best], p[best], rtol=2e-3)  # top k exact up to float16
  np.testing.assert_allclose(q.sum(), 1.0, rtol=5e-3)      # the rest spread evenly
  rest = np.setdiff1d(np.arange(20), best)
  np.testing.assert_allclose(q[rest], (1 - p[best].sum()) / 15, rtol=2e-3)


def test_quantize_keeps_one_hot_teachers_finite():
  logp = cache.log_softmax(np.array([[1e4, 0.0, 0.0, 0.0]]))
  classes, top, rest = cache.quantize(logp, 2)
  assert classes[0, 0] == 0 and np.isfinite(top).all() and rest[0] == cache.LOGP_FLOOR
  out = cache.dequantize(classes, top, rest, 4)
  assert np.isfinite(out).all() and out[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_view_choice_is_a_pure_uniform_draw_per_epoch():
  idx = np.arange(3000)
  a = cache.choose_views(0, 0, idx, 4)
  np.testing.assert_array_equal(a, cache.choose_views(0, 0, idx, 4))
  assert set(a) == {0, 1, 2, 3} and np.abs(np.bincount(a) / 3000 - 0.25).max() < 0.03
  assert (a != cache.choose_views(0, 1, idx, 4)).mean() > 0.6  # a fresh draw next epoch
  assert (a != cache.choose_views(1, 0, idx, 4)).mean() > 0.6
  np.testing.assert_array_equal(cache.choose_views(0, 5, idx[7:9], 4),
                                cache.choose_views(0, 5, idx, 4)[7:9])


def test_cache_info_describes_the_run(made):
  config, setup, store = made
  with open(os.path.join(config.teacher.cache, cache.INFO_FILE)) as f:
    info = json.load(f)
  assert info['views'] == VIEWS and info['num_examples'] == 1200 and info['top_k'] == 0
  assert info['train_augment'] == 'crop' and info['teacher'] == 'digits_cnn'
  assert len(info['teacher_sha256']) == 64
  windows, _ = store.rows(np.arange(1200), np.zeros(1200, np.int64))
  # Each recorded window is the one the train op draws from that view's seed.
  draw = preprocess.train_window('crop', image_size=8, crop_padding=1)
  source = input_pipeline.record_source(setup.data.builder, 'train')
  features = setup.data.builder.info.features
  for i in (0, 17, 1199):
    image = features.deserialize_example(source(np.array([i]))[0])['image']
    for v in range(VIEWS):
      recorded, _ = store.rows(np.array([i]), np.array([v]))
      np.testing.assert_array_equal(recorded[0], draw(image, cache.view_seed(i, v, VIEWS)))
  assert set(windows[:, 0]) == {0, 1, 2} and set(windows[:, 1]) == {0, 1, 2}  # pad 1 shifts
  assert (windows[:, 2:4] == 8).all() and (windows[:, 4] == 0).all()  # 8x8 crops, no flip


def test_replayed_views_carry_the_teachers_logits_for_that_view(made):
  config, setup, store = made
  batches = input_pipeline.train_batches(config, setup.data.builder, start_step=0,
                                         local_batch_size=64, steps_per_epoch=18,
                                         teacher_cache=store)
  nets = setup.networks
  forward = jax.jit(lambda x: jax.nn.log_softmax(nets.teacher.apply(
      nets.teacher_variables, on_device.normalize(x, config.input.mean, config.input.std),
      train=False)))
  seen = []
  for _ in range(3):
    batch = next(batches)
    assert batch['teacher_logits'].shape == (64, 10)
    assert batch['teacher_logits'].dtype == np.float32
    # The teacher on the pixels the student gets equals what the cache recorded for them.
    np.testing.assert_allclose(batch['teacher_logits'], forward(batch['image']), atol=2e-2)
    seen.append(batch['image'])
  assert len({b.tobytes() for b in seen}) == 3


def test_cached_batches_resume_exactly(made):
  config, setup, store = made
  kwargs = dict(local_batch_size=32, steps_per_epoch=37, teacher_cache=store)
  run = input_pipeline.train_batches(config, setup.data.builder, start_step=0, **kwargs)
  whole = [next(run) for _ in range(40)]  # into the second epoch: new views are drawn
  resumed = input_pipeline.train_batches(config, setup.data.builder, start_step=35, **kwargs)
  for want in whole[35:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Epoch 2 shows an example under another view than epoch 1, for most examples.
  assert not np.array_equal(whole[0]['image'], whole[37]['image'])


def test_a_run_reads_the_cache_and_matches_the_online_teacher(digits_data_dir, tmp_path):
  """Without augmentation every view is the plain image: the cached run must follow the online
  one step for step, up to the float16 storage of the log-probabilities."""
  online = _digits_config(digits_data_dir, tmp_path, **{'input.train_augment': 'none',
                                                        'teacher.cache': ''})
  cached = _digits_config(digits_data_dir, tmp_path, **{'input.train_augment': 'none',
                                                        'teacher.cache_views': 1})
  runs = {}
  for name, config in (('online', online), ('cached', cached)):
    runs[name] = train.train_and_evaluate(config, str(tmp_path / name), progress='none')
  assert cache.exists(cached.teacher.cache)  # the run recorded it first
  read = lambda name: [json.loads(l) for l in open(tmp_path / name / 'metrics.jsonl')]
  online_kd = [r['loss/kd'] for r in read('online') if 'loss/kd' in r]
  cached_kd = [r['loss/kd'] for r in read('cached') if 'loss/kd' in r]
  assert len(online_kd) == len(cached_kd) == 4
  np.testing.assert_allclose(cached_kd, online_kd, rtol=2e-3)
  assert runs['cached']['top1'] == pytest.approx(runs['online']['top1'], abs=0.01)


@pytest.mark.parametrize('override, message', [
    ({'mixup.mixup_alpha': 0.8}, 'mixup'),
    ({'input.randaugment': 'rand-m9-mstd0.5'}, 'RandAugment'),
    ({'input.random_erasing': 0.25}, 'erasing'),
    ({'teacher.cache_views': 0}, 'cache_views'),
    ({'input.strong_augment': 'fixmatch'}, 'strong'),
])
def test_settings_that_cannot_be_replayed_are_refused(digits_data_dir, tmp_path, override,
                                                       message):
  config = _digits_config(digits_data_dir, tmp_path, **override)
  with pytest.raises(KdjaxError, match=message):
    train.build(config)


def test_feature_taps_of_the_teacher_are_refused(digits_data_dir, tmp_path):
  config = _digits_config(digits_data_dir, tmp_path)
  with config.unlocked():
    config.losses.pkt = dict(weight=1.0)  # reads the teacher's pooled features
  with pytest.raises(KdjaxError, match='teacher.cache cannot serve this recipe'):
    train.build(config)


def test_a_cache_made_for_another_setting_is_refused(made, tmp_path):
  config, setup, store = made
  other = _digits_config(config.data_dir, tmp_path, **{'teacher.cache_views': VIEWS + 1,
                                                       'input.crop_padding': 2})
  with pytest.raises(KdjaxError, match='cache_views|views.*crop_padding|crop_padding'):
    store.check(other, setup)
  with pytest.raises(KdjaxError, match='holds no finished cache'):
    cache.Store(str(tmp_path / 'nothing'))
