"""`dataset='folder:/path'`: a folder of images, converted once into a prepared TFDS dataset.

Layouts (one subfolder per class; class names = the folder names, sorted):

  /path/<class>/<image>                  a share `input.holdout_fraction` of every class is
                                         held out as split 'validation'; the rest is 'train'
  /path/train/<class>/<image>            splits as found: 'train' and any of 'val',
  /path/val|validation|test/<class>/...  'validation', 'test' (no holdout)

Images may sit in nested folders below their class folder; files of other kinds and hidden
files are skipped. Every file PIL reads is accepted (PNG, JPEG, BMP, GIF, TIFF, WebP, ...).

The conversion writes, with TFDS's own writer (`tfds.dataset_builders.store_as_tfds_dataset`),
a dataset with `image` (PNG, 1 channel if every image is grayscale, else 3: RGB, alpha dropped;
a fixed shape when all images share one size, else (None, None, C)), `label` (ClassLabel over
the class names) and `id` (int64, unique over all splits). Training ids interleave the classes
in proportion, so `input.num_labeled=k` keeps about k / num_classes labels per class. It then
opens the result with `tfds.builder_from_directory`, so every part of the input pipeline (file
order, per-process sharding, exact resume, eval padding) treats it like any TFDS dataset.

Where: `<data_dir or TFDS's default>/kdjax_folders/<folder name>-<hash of its absolute path>/
<fingerprint>/`, the fingerprint covering the file list, sizes and modification times (and the
holdout fraction when it applies), so a changed folder is converted again and an unchanged one
never is. Several processes may convert at once: each writes a private folder and renames it
into place; the first rename wins. Older conversions of the same folder are left in place.

The holdout is stratified per class and fixed: a class's files are ordered by a SHA-256 of their
path inside the folder (not by the run seed), and the first round(n * fraction) of them (at
least 1, never all) are held out; adding files moves only the files added. The per-channel mean
and std of the training images' pixels (on [0, 1], at the stored size) are computed during the
conversion and stored next to the dataset as `kdjax_folder.json`, with the class counts.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid

import numpy as np
import tensorflow_datasets as tfds

from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)

PREFIX = 'folder:'
NAME = 'image_folder'
VERSION = '1.0.0'
SUMMARY_FILE = 'kdjax_folder.json'
SPLIT_FOLDERS = ('train', 'val', 'validation', 'test')
EVAL_SPLITS = ('validation', 'val', 'test')  # what input.eval_split='' picks, first found
HOLDOUT_SPLIT = 'validation'
EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')
_FORMAT = 1  # Bump when the conversion changes: every folder is then converted again.


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a folder holds: class names and, per split, (path inside the folder, class index)
  in id order."""
  root: str
  classes: tuple
  splits: dict
  held_out: bool


def is_folder(name) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def folder_root(name, key='dataset') -> str:
  """The absolute folder of 'folder:/path', or a KdjaxError saying what is wrong with it."""
  path = name[len(PREFIX):]
  if not path:
    raise KdjaxError(f"{key}='{name}' names no folder; write {key}=folder:/path/to/images")
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    raise KdjaxError(f"image folder '{root}' not found ({key}); give a folder with one "
                     'subfolder of images per class')
  return root


def listing(root):
  """Sorted (path inside `root`, size, mtime_ns) of every image file, hidden ones skipped."""
  found = []
  for top, dirs, files in os.walk(root, followlinks=True):  # symlinked class folders too
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in files:
      if name.startswith('.') or not name.lower().endswith(EXTENSIONS):
        continue
      path = os.path.join(top, name)
      stat = os.stat(path)
      found.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
  return sorted(found)


def _subfolders(path):
  return sorted(d for d in os.listdir(path)
                if not d.startswith('.') and os.path.isdir(os.path.join(path, d)))


def _holds_images(path):
  """Whether `path` holds an image file `listing` would take (hidden ones, e.g. a zip's
  __MACOSX/._x.jpg, do not count)."""
  return any(not f.startswith('.') and f.lower().endswith(EXTENSIONS)
             for _, _, files in os.walk(path, followlinks=True) for f in files)


def _has_split_folders(root):
  """Whether `root` is /train/<class>/... (+ val/validation/test), not /<class>/...: train/
  holds class folders and every subfolder that holds images is a split name (classes may be
  called 'test'; a stray folder without images, e.g. __MACOSX, is ignored). A train/ next to
  another folder of images is ambiguous: a KdjaxError names it."""
  subs = [d for d in _subfolders(root) if _holds_images(os.path.join(root, d))]
  train = os.path.join(root, 'train')
  if 'train' not in subs or not _subfolders(train):
    return False
  others = [d for d in subs if d not in SPLIT_FOLDERS]
  if others:
    raise KdjaxError(f"image folder '{root}' has train/ and also {others}: either put every "
                     f"class under train/ (and {'/, '.join(SPLIT_FOLDERS[1:])}/), or use class "
                     'folders only, without train/')
  return True


def _path_hash(relpath):
  return hashlib.sha256(relpath.replace(os.sep, '/').encode()).hexdigest()


def holdout_count(n, fraction) -> int:
  """How many of a class's `n` files are held out: round(n * fraction), at least 1, never all."""
  if n < 2:
    return 0
  return min(max(round(n * fraction), 1), n - 1)


def _interleave(per_class):
  """[(relpath, class)] with the classes spread evenly: sorted by each file's relative position
  within its class, so every prefix (num_labeled) keeps about the classes' proportions."""
  keyed = [((i + 0.5) / len(files), c, f) for c, files in per_class.items()
           for i, f in enumerate(files)]
  return [(f, c) for _, c, f in sorted(keyed)]


def _by_class(paths, top):
  """{class folder name: [paths]} of the paths <top>/<class>/... (top '' = the folder itself);
  images outside a class folder belong to no class and are skipped."""
  out = {}
  for path in paths:
    parts = path.split(os.sep)
    if top:
      if parts[0] != top:
        continue
      parts = parts[1:]
    if len(parts) >= 2:
      out.setdefault(parts[0], []).append(path)
  return out


def scan(root, paths, holdout_fraction) -> Layout:
  """The layout of `root` from its image paths (`listing`): classes, splits, holdout."""
  split_folders = _has_split_folders(root)
  train = _by_class(paths, 'train' if split_folders else '')
  classes = tuple(sorted(train))
  if not classes:
    where = os.path.join(root, 'train') if split_folders else root
    raise KdjaxError(f"image folder '{where}' has no class subfolders with images; put each "
                     "class's images in a subfolder named after the class")
  index = {name: i for i, name in enumerate(classes)}
  order = lambda files: sorted(files, key=_path_hash)
  splits, held_out = {}, False
  found = [s for s in SPLIT_FOLDERS[1:] if split_folders and os.path.isdir(os.path.join(root, s))]
  if found:
    splits['train'] = _interleave({index[c]: order(f) for c, f in train.items()})
    for name in found:
      per_class = _by_class(paths, name)
      unknown = sorted(set(per_class) - set(classes))
      if unknown:
        raise KdjaxError(f"class folder(s) {', '.join(unknown)} in '{os.path.join(root, name)}' "
                         f"have no training images in '{os.path.join(root, 'train')}'; add "
                         'training images or remove them')
      splits[name] = [(f, index[c]) for c in sorted(per_class) for f in sorted(per_class[c])]
  else:
    if not 0 < holdout_fraction < 1:
      raise KdjaxError(f'input.holdout_fraction must be in (0, 1) when the folder has no val/ '
                       f"or test/ split folder, got {holdout_fraction}; e.g. 0.1, or add "
                       f"'{root}/train' and '{root}/val' folders")
    kept, out = {}, []
    for c, files in train.items():
      files = order(files)
      k = holdout_count(len(files), holdout_fraction)
      kept[index[c]] = files[k:]
      out += [(f, index[c]) for f in sorted(files[:k])]
    splits['train'] = _interleave(kept)
    splits[HOLDOUT_SPLIT] = sorted(out, key=lambda fc: (fc[1], fc[0]))
    held_out = True
  return Layout(root=root, classes=classes, splits=splits, held_out=held_out)


def fingerprint(files, holdout_fraction, held_out) -> str:
  """A hash of the folder's contents (`listing`) and the options that shape the conversion."""
  key = json.dumps([_FORMAT, holdout_fraction if held_out else None, files])
  return hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_folder(root, data_dir) -> str:
  """Where the conversions of `root` go: one folder per source folder under data_dir."""
  base = data_dir or tfds.core.constants.get_default_data_dir()
  slug = re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root.rstrip(os.sep))) or 'root'
  digest = hashlib.sha256(root.encode()).hexdigest()[:8]
  return os.path.join(os.path.expanduser(base), 'kdjax_folders', f'{slug}-{digest}')


def _open_image(root, relpath):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(os.path.join(root, relpath))
  except Exception as e:  # pylint: disable=broad-except  PIL raises several kinds
    raise KdjaxError(f"cannot read image '{os.path.join(root, relpath)}' "
                     f'({type(e).__name__}); remove or replace the file') from e


def inspect(layout):
  """(channels, (H, W) or None): 1 channel if every image is grayscale, else 3; the size when
  every image has the same one. Reads only the image headers."""
  modes, sizes = set(), set()
  for files in layout.splits.values():
    for relpath, _ in files:
      with _open_image(layout.root, relpath) as image:
        modes.add(image.mode)
        sizes.add((image.height, image.width))
  channels = 1 if modes <= set(GRAY_MODES) else 3
  return channels, (sizes.pop() if len(sizes) == 1 else None)


def load_pixels(root, relpath, channels) -> np.ndarray:
  """The image as uint8 [H, W, channels] (grayscale 'L' or 'RGB', alpha dropped)."""
  with _open_image(root, relpath) as image:
    if image.mode.startswith('I'):  # 16- or 32-bit integer grayscale: PIL's convert clips it
      wide = np.asarray(image).astype(np.float64)
      top = 65535.0 if wide.max() <= 65535 else float(wide.max())
      gray = np.round(wide / top * 255).astype(np.uint8)
      pixels = gray[..., None] if channels == 1 else np.repeat(gray[..., None], 3, axis=-1)
      return pixels.reshape(image.height, image.width, channels)
    if image.mode == 'F':
      raise KdjaxError(f"image '{os.path.join(root, relpath)}' holds floating-point pixels "
                       '(PIL mode F), whose range kdjax cannot know; save it as 8- or 16-bit')
    image = image.convert('L' if channels == 1 else 'RGB')
    return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


class Moments:
  """Per-channel mean and (population) std of pixel values on [0, 1], accumulated image by
  image in float64."""

  def __init__(self, channels):
    self.count = 0
    self.total = np.zeros(channels)
    self.squares = np.zeros(channels)

  def add(self, pixels):
    x = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
    self.count += len(x)
    self.total += x.sum(0)
    self.squares += (x * x).sum(0)

  def result(self):
    mean = self.total / self.count
    std = np.sqrt(np.maximum(self.squares / self.count - mean * mean, 0.0))
    # A constant channel would divide by zero; normalising it by 1 leaves it centred.
    return mean.tolist(), np.where(std > 0, std, 1.0).tolist()


def _examples(layout, split, channels, first_id, moments):
  """(key, example) pairs of one split for the TFDS writer; training pixels feed `moments`."""
  for i, (relpath, label) in enumerate(layout.splits[split]):
    pixels = load_pixels(layout.root, relpath, channels)
    if moments is not None:
      moments.add(pixels)
    yield relpath, {'image': pixels, 'label': label, 'id': first_id + i}


def convert(layout, target):
  """Writes the TFDS dataset and `SUMMARY_FILE` of `layout` into the new folder `target`;
  returns the summary."""
  channels, size = inspect(layout)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(*(size or (None, None)), channels),
                                   encoding_format='png'),
      'label': tfds.features.ClassLabel(names=list(layout.classes)),
      'id': tfds.features.Scalar(dtype=np.int64),
  })
  moments = Moments(channels)
  split_data, first_id = {}, 0
  for split, files in layout.splits.items():
    split_data[split] = _examples(layout, split, channels, first_id,
                                  moments if split == 'train' else None)
    first_id += len(files)
  tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version=VERSION, features=features, split_datasets=split_data,
      data_dir=target, description=f'kdjax conversion of the image folder {layout.root}',
      file_format='array_record')  # read by index (kdjax/data/input_pipeline.py)
  mean, std = moments.result()
  counts = {split: [sum(1 for _, c in files if c == i) for i in range(len(layout.classes))]
            for split, files in layout.splits.items()}
  summary = dict(folder=layout.root, classes=list(layout.classes), channels=channels,
                 image_size=list(size) if size else None, held_out=layout.held_out,
                 counts=counts, mean=mean, std=std)
  with open(os.path.join(target, SUMMARY_FILE), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def prepare(name, data_dir=None, holdout_fraction=0.1, key='dataset'):
  """(TFDS builder, summary dict) of the image folder `name` ('folder:/path'), converting it
  first when this folder content has not been converted yet."""
  root = folder_root(name, key)
  files = listing(root)
  layout = scan(root, [f[0] for f in files], holdout_fraction)
  final = os.path.join(cache_folder(root, data_dir),
                       fingerprint(files, holdout_fraction, layout.held_out))
  if not os.path.exists(os.path.join(final, SUMMARY_FILE)):
    log.info('Converting the image folder %s (%d images) into a TFDS dataset in %s', root,
                 sum(len(f) for f in layout.splits.values()), final)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    private = f'{final}.incomplete-{uuid.uuid4().hex[:8]}'
    try:
      convert(layout, private)
      try:
        os.rename(private, final)
      except OSError:  # Another process finished the same conversion first.
        if not os.path.exists(os.path.join(final, SUMMARY_FILE)):
          raise
    finally:
      shutil.rmtree(private, ignore_errors=True)
  with open(os.path.join(final, SUMMARY_FILE)) as f:
    summary = json.load(f)
  builder = tfds.builder_from_directory(os.path.join(final, NAME, VERSION))
  return builder, dict(summary, stored=final)


def default_eval_split(builder) -> str:
  """The split that input.eval_split='' means: validation, val or test, the first present."""
  for split in EVAL_SPLITS:
    if split in builder.info.splits:
      return split
  raise KdjaxError(f'the image folder has no validation, val or test split (only '
                   f"{', '.join(builder.info.splits)}); set input.eval_split")
