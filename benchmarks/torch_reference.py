r"""The PyTorch step a user would run instead of kdjax, for side-by-side speed comparisons.

`python -m kdjax.bench --config=... --torch` starts this file as a child process and times its
steps alternately with kdjax's (docs/design.md#speed). It can also be run alone:

  python benchmarks/torch_reference.py --student=resnet18 --teacher=resnet34 --batch=32 \
      --image_size=112 --losses=ce,dkd --steps=20

What it runs is what mdistiller's trainer does for one iteration, in eager PyTorch:
  student_step     student forward, cross-entropy, backward, SGD (momentum 0.9, nesterov off,
                   weight decay 1e-4), on a channels_last model;
  teacher_forward  the frozen teacher in eval mode under `torch.no_grad()`;
  distill_step     the teacher forward, then the student step whose loss is CE plus the
                   recipe's logit terms (KD or DKD, written here from their definitions).
Models are torchvision's ResNets (timm's names for them are the same). Inputs are one fixed
random float32 batch, as kdjax's benchmark also reuses one batch. Needs torch and torchvision
(`pip install torch torchvision`); kdjax itself never imports this file.

Child protocol (`--serve`): one JSON line per request on stdin, `{"kind": ..., "steps": N}`,
answered by one JSON line `{"seconds_per_step": s, "cpu_seconds": c}`.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
import torchvision


def kd_loss(student_logits, teacher_logits, temperature):
  """Hinton KD: tau^2 * batch-mean KL(softmax(t / tau) || softmax(s / tau))."""
  log_p_s = F.log_softmax(student_logits / temperature, dim=1)
  log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
  return temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()


def dkd_loss(student_logits, teacher_logits, labels, alpha, beta, temperature):
  """DKD as mdistiller computes it: binary target/non-target KL (TCKD) plus the KL over the
  non-target classes with the target logit pushed down by 1000 (NCKD), each times tau^2."""
  gt = F.one_hot(labels, student_logits.shape[1]).bool()
  p_s = F.softmax(student_logits / temperature, dim=1)
  p_t = F.softmax(teacher_logits / temperature, dim=1)
  b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1)
  b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1)
  tckd = F.kl_div(torch.log(b_s), b_t, reduction='sum') / labels.shape[0]
  masked_s = student_logits / temperature - 1000.0 * gt
  masked_t = teacher_logits / temperature - 1000.0 * gt
  nckd = F.kl_div(F.log_softmax(masked_s, 1), F.softmax(masked_t, 1),
                  reduction='sum') / labels.shape[0]
  return temperature**2 * (alpha * tckd + beta * nckd)


def logit_terms(spec):
  """{name: hparams} -> f(student_logits, teacher_logits, labels) summing the weighted terms."""
  def total(s, t, y):
    out = 0.0
    for name, h in spec.items():
      w = h.get('weight', 1.0)
      if name == 'kd':
        out = out + w * kd_loss(s, t, h.get('temperature', 4.0))
      elif name == 'dkd':
        out = out + w * dkd_loss(s, t, y, h.get('alpha', 1.0), h.get('beta', 8.0),
                                 h.get('temperature', 4.0))
      elif name != 'ce':
        raise ValueError(f'the PyTorch reference step has no {name!r} term (it has ce, kd, dkd)')
    return out
  return total


class Reference:
  """The three timed callables on one fixed batch."""

  def __init__(self, *, student, teacher, num_classes, batch, image_size, losses,
               channels_last=True, seed=0):
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    build = lambda name: getattr(torchvision.models, name)(num_classes=num_classes).to(
        memory_format=fmt)
    self.student = build(student).train()
    self.teacher = build(teacher).eval() if teacher else None
    for p in (self.teacher.parameters() if self.teacher else ()):
      p.requires_grad_(False)
    self.images = torch.randn(batch, 3, image_size, image_size).to(memory_format=fmt)
    self.labels = torch.randint(0, num_classes, (batch,))
    self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9,
                                     weight_decay=1e-4)
    self.ce_weight = losses.get('ce', {}).get('weight', 1.0)
    self.distill_terms = logit_terms(losses)

  def _update(self, loss):
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss

  def student_step(self):
    logits = self.student(self.images)
    return self._update(F.cross_entropy(logits, self.labels))

  def teacher_forward(self):
    with torch.no_grad():
      return self.teacher(self.images)

  def distill_step(self):
    with torch.no_grad():
      teacher_logits = self.teacher(self.images)
    logits = self.student(self.images)
    loss = (self.ce_weight * F.cross_entropy(logits, self.labels)
            + self.distill_terms(logits, teacher_logits, self.labels))
    return self._update(loss)

  def time(self, kind, steps):
    """(seconds per call, process CPU seconds) over `steps` calls after two warm-up calls."""
    fn = getattr(self, kind)
    for _ in range(2):
      fn()
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(steps):
      out = fn()
    float(out.sum())  # eager PyTorch on CPU is synchronous; this only reads the result
    return (time.perf_counter() - start) / steps, time.process_time() - cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--student', default='resnet18')
  parser.add_argument('--teacher', default='resnet34')
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image_size', type=int, default=112)
  parser.add_argument('--losses', default='{"ce": {}, "dkd": {"alpha": 1, "beta": 0.5, '
                      '"temperature": 1}}', help='JSON {term: hparams}')
  parser.add_argument('--threads', type=int, default=0, help='0: torch default')
  parser.add_argument('--no_channels_last', action='store_true')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--serve', action='store_true', help='answer timing requests on stdin')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  ref = Reference(student=args.student, teacher=args.teacher, num_classes=args.num_classes,
                  batch=args.batch, image_size=args.image_size, losses=json.loads(args.losses),
                  channels_last=not args.no_channels_last)
  if not args.serve:
    kinds = ['student_step'] + (['teacher_forward', 'distill_step'] if args.teacher else [])
    for kind in kinds:
      seconds, _ = ref.time(kind, args.steps)
      print(f'{kind:<16s} {args.batch / seconds:8.1f} images/s  (torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads)')
    return
  print(json.dumps({'ready': True, 'torch': torch.__version__,
                    'threads': torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    seconds, cpu = ref.time(request['kind'], request['steps'])
    print(json.dumps({'seconds_per_step': seconds, 'cpu_seconds': cpu}), flush=True)


if __name__ == '__main__':
  main()
