"""The keys every recipe has, with defaults (docs/design.md#config-keys); recipes set values only.

A recipe's `get_config(arg)` starts from `base_config()`, sets its values, declares its loss
terms and returns `config` locked (`lock_config`), so a misspelt override fails instead of being
silently ignored. `arg` is the text after ':' in `--config=configs/<recipe>.py:<arg>`; every
recipe accepts `smoke`.
"""

import ml_collections

from kdjax.errors import KdjaxError


def base_config():
  c = ml_collections.ConfigDict()
  c.smoke = False              # tiny sizes, few steps; the only mode that may use a random teacher
  c.dataset = 'uci_digits'     # TFDS name, or folder:/path/to/images (kdjax/data/image_folder.py)
  c.data_dir = ml_collections.FieldReference(None, field_type=str)  # TFDS data dir; None = default
  c.input = ml_collections.ConfigDict(dict(
      train_split='train',
      eval_split='test',            # '' (folder: datasets) = validation, val or test, as found
      # folder: datasets without val/ or test/ folders: the share of each class held out for
      # evaluation (split 'validation'); fixed by a hash of the file paths, not by the seed.
      holdout_fraction=0.1,
      image_size=8,
      # none | crop | crop_flip | inception_crop_flip (JPEG bytes) | random_resized_crop_flip
      # (timm's RandomResizedCrop, bicubic, + flip, on decoded images: CIFAR at 224)
      train_augment='none',
      crop_padding=4,               # crop, crop_flip: pad, then crop back (random shift)
      # none | resize_center_crop (JPEG bytes, bilinear) | bicubic_resize_center_crop (timm's
      # eval on decoded images): shorter side to eval_resize_size, centre crop image_size
      eval_preprocess='none',
      eval_resize_size=256,
      # Training only, after train_augment, in timm's order (DeiT / OFA-KD: 'rand-m9-mstd0.5-inc1'
      # and 0.25): RandAugment on [0, 255] pixels as timm's config string, '' = off; then
      # normalisation; then random erasing (timm's mode 'pixel') with this probability, 0 = off.
      randaugment='',
      random_erasing=0.0,
      # A second, strongly augmented view of every training image, batch key 'image_strong'
      # (MLKD): its own train_augment crop, then 'fixmatch' (FixMatch's RandAugment + Cutout, as
      # MLKD's data code) or a timm RandAugment string; '' = none. Terms read its taps as
      # '<tap>@strong' (docs/design.md#two-views).
      strong_augment='',
      # Per channel, on [0, 1] pixels; () (folder: datasets only) = computed over the training
      # images when the folder is converted, and written into the run's config.
      mean=(0.5,), std=(0.5,),
      shuffle_buffer=10_000,
      num_labeled=0,                # > 0: only examples with id < num_labeled keep their label
      # A second source of images mixed into every training batch with label -1 (SSLD).
      unlabeled=ml_collections.ConfigDict(dict(
          dataset='',               # TFDS name; '' = `dataset`
          data_dir='',              # '' = `data_dir`
          split='train',
          fraction=0.0,             # share of each training batch; 0 = none
      )),
      prefetch_batches=2,
      # auto | random_access | sequential. random_access reads a dataset prepared as ArrayRecord
      # by index: each process reads only its rows of every global batch, resuming reads nothing
      # twice (auto: for ArrayRecord datasets). sequential reads TFRecord files in shuffled
      # order (docs/design.md#input-pipeline).
      reader='auto',
      # Sequential reads with several processes: 'example' = batches identical to a single
      # process (each process reads the whole stream and keeps its rows of each global batch
      # before augmenting; the JPEG ops also decode only those); 'file' = each process reads
      # its own files (batches then depend on the process count).
      shard_by='example',
      add_index=False,              # batches carry `index`, the example's position in the split
  ))
  c.batch_size = 64             # global, over all devices and processes
  c.eval_batch_size = 0         # 0 = batch_size
  c.seed = 0
  c.num_epochs = 1.0
  c.num_train_steps = -1        # > 0 overrides num_epochs
  c.log_every_steps = 50
  c.eval_every_epochs = 1.0     # <= 0: only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.optimizer = ml_collections.ConfigDict(dict(
      name='sgd',                   # sgd | adamw | dot (SGD with DOT's two momenta)
      learning_rate=0.1,
      lr_base_batch_size=0,         # > 0: lr = learning_rate * batch_size / lr_base_batch_size
      momentum=0.9, nesterov=False,
      weight_decay=0.0,
      schedule='step',              # step | cosine | constant
      decay_epochs=(), decay_factor=0.1,
      warmup_epochs=0.0,
      warmup_learning_rate=0.0,     # the warm-up's first value (timm's warmup_lr); not batch-scaled
      min_learning_rate=0.0,        # cosine: the floor it decays to (timm's min_lr); not batch-scaled
      clip_grad_norm=0.0,           # > 0: clip the gradient of every trainable parameter to this
                                    # global L2 norm before the update (DeiT / OFA-KD: 5.0)
      b1=0.9, b2=0.999, eps=1e-8,   # adamw
      # dot: the task (ce terms) gradient's momentum is momentum - dot_delta, the distillation
      # terms' momentum + dot_delta (mdistiller: 0.075 CIFAR-100, 0.09 ImageNet)
      dot_delta=0.075,
  ))
  # Mixup / CutMix on the global batch inside the train step, seen by teacher and student
  # (timm's Mixup, mode 'batch'); both alphas 0 = off. Needs every training label.
  c.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.0,              # > 0: Mixup with lam ~ Beta(alpha, alpha) (DeiT: 0.8)
      cutmix_alpha=0.0,             # > 0: CutMix with lam ~ Beta(alpha, alpha) (DeiT: 1.0)
      prob=1.0,                     # probability that a batch is mixed at all
      switch_prob=0.5,              # both alphas > 0: probability of CutMix instead of Mixup
  ))
  # Exponential moving average of the trainable networks' params and batch_stats, updated after
  # every applied update: ema = decay * ema + (1 - decay) * new (timm ModelEmaV2; DeiT 0.99996).
  # 0 = off. When on, it is evaluated as '<network>_ema' and is what export and teacher
  # loading from the workdir take.
  c.ema = ml_collections.ConfigDict(dict(decay=0.0))
  # checkpoint: '' = random init; else weights to start from (as teacher.checkpoint takes).
  # reset_classifier: True = all of checkpoint but its final classifier, which starts fresh
  # (fine-tuning weights trained on other classes; timm's name), so its class count may differ.
  # drop_path_rate: stochastic depth of token models (ViT/DeiT, Swin, ConvNeXt, Mixer/ResMLP;
  # timm's per-block rule), training mode only; 0 = off; > 0 on another model is an error.
  # shard: False = the train state (student, peer, connectors, batch_stats, optimizer state,
  # EMA) is replicated on every device; True = its large arrays are split over the devices,
  # FSDP-style, each along its largest dimension that divides by the device count.
  c.student = ml_collections.ConfigDict(dict(model='', checkpoint='', reset_classifier=False,
                                             dtype='float32', drop_path_rate=0.0, shard=False))
  # shard: the same for the frozen teacher's variables; also done automatically when they
  # would take more than half of a device's memory (where the backend reports it; not CPU).
  # dtype: the teacher's compute dtype; 'auto' = bfloat16 on GPU / TPU, float32 on CPU.
  # cache: '' = the teacher runs in every train step; else a folder of recorded teacher logits
  # for cache_views views of every training example (kdjax/cache.py: made by python -m
  # kdjax.cache, or by the run itself when the folder holds no cache), read instead; logit
  # methods and replayable views only. cache_top_k: 0 = full float16 log-probabilities, else
  # FKD's top-k quantisation.
  c.teacher = ml_collections.ConfigDict(dict(model='', checkpoint='', dtype='auto',
                                             shard=False, cache='', cache_views=8,
                                             cache_top_k=0))
  c.peer = ml_collections.ConfigDict(dict(model='', dtype='float32',  # DML's second network
                                          drop_path_rate=0.0))
  c.on_nonfinite = 'stop'       # a non-finite loss or gradient: 'stop' the run, or 'skip' the step
  c.allow_config_change = False  # resume even if the config changed in a way that alters training
  c.export = 'student'          # the trainable network that export and teacher loading take
  c.losses = ml_collections.ConfigDict()
  return c


def parse_arg(arg, allowed=('smoke',)):
  """The recipe argument ('' or one of `allowed`), or a KdjaxError naming the valid ones."""
  arg = arg or ''
  if arg and arg not in allowed:
    raise KdjaxError(f"unknown recipe argument '{arg}'; valid: {', '.join(allowed)}")
  return arg


def lock_config(c):
  """Declares every key each loss term accepts (its method's hyperparameters with their
  defaults, warmup_epochs, weight_schedule, method), then locks the config: any of them can be
  overridden from the command line, and a misspelt key fails."""
  from kdjax import methods  # pylint: disable=g-import-not-at-top  (imports JAX)
  for name in list(c.losses.keys()):
    term = c.losses[name]
    method = methods.METHODS.get(term.get('method') or name)
    if method is None:
      continue  # train.build reports the unknown method with the list of valid ones.
    defaults = dict(method.config_defaults(), warmup_epochs=0.0, weight_schedule=(),
                    method=method.name)
    for key, value in defaults.items():
      if key not in term:
        term[key] = value
  c.lock()
  return c
