"""train(): contrastive (CLIP) training of a spec's model on a catalog's train split, plus attribute
heads, as a few named steps (read data, build the model, preload, epochs, heads, metadata).

What it does, and why:

- open_clip's own pieces: ``ClipLoss`` for the loss, the CLIP BPE tokenizer, the towers' ``lock``
  methods for the strategies, ``open_clip_train``'s cosine schedule and its weight-decay
  exclusions. Nothing of CLIP is re-implemented here.
- Images go through ``lenscope.client.inputs.preprocess.preprocess_bytes``: the exact bytes -> tensor path
  the serving stack runs, so training never sees a different crop, resize or normalisation than
  production. Light augmentation (small zoom/shift, mirror, brightness) is applied afterwards on
  the normalised batch.
- Strategies: ``full``; ``frozen_text`` (text tower locked, image tower trained);
  ``frozen_image`` (LiT proper: image tower locked, text tower trained); ``last_n`` (only the
  last N transformer blocks plus final norm/projection of both towers). ``logit_scale`` always
  trains.
- Two views: with ``two_view`` each product also contributes its ``photo`` (a user-style shot;
  for a row without one, an independently augmented copy of its catalog image), and an
  image-image contrastive term pulls photo and catalog image together (it lifted photo -> catalog
  R@1 from 0.19 to 0.31 on the generated catalog in earlier measurements).
- Caption word dropout: titles that always name a pattern made short queries prefer patterned
  items; dropping words at random teaches partial descriptions.
- Heads: ``joint`` adds a weighted cross-entropy of the attribute heads on the image embedding
  to the contrastive loss; ``frozen`` trains the heads afterwards on embeddings of the finished
  (frozen) model, so retrieval is unchanged by construction.

- A real catalog: label sets from the catalog when the spec's do not fit (``labels``), a
  product-level held-out split when it has none (``split``), every image of a product a positive
  (``data``), a step-based schedule with a floor so a small catalog still gets a real one.
- Proof before writing (``heldout``): the start model is measured on held-out products before the
  first step, then every ``eval_every`` steps; the best evaluation's weights are kept (early
  stopping after ``patience`` evaluations without a gain; Ctrl-C keeps the best so far), and a
  result below its start is not written unless ``force``.

The result is a lenscope checkpoint (``save_checkpoint``) whose ``meta`` records strategy, config,
seed, per-step and per-epoch losses, the held-out table, the label sets and timings.

Reproducibility: the shipped model must come out bit-identical, so the steps consume the global,
``gen`` and ``text_rng`` random streams in exactly the order of one straight-line run.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lenscope.client.catalog.rows import Catalog
from lenscope.client.core.modelspec import ModelSpec
from lenscope.export.model import LoadedModel, save_checkpoint
from lenscope.export.training.config import TrainConfig, TrainResult
from lenscope.export.training.data import Augment, TrainData, Views, drop_words, preload_views, read_data
from lenscope.export.training.heads import attribute_loss, fit_heads, keep_better_start_heads
from lenscope.export.training.heldout import decide, evaluate
from lenscope.export.training.metadata import held_out_report, run_metadata
from lenscope.export.training.monitor import Progress, describe_epoch, embed_images, head_accuracy
from lenscope.export.training.start import autocast, init_model, resolve_precision
from lenscope.export.training.strategies import apply_strategy, param_groups

import open_clip  # noqa: E402  (lenscope.export.model already silenced torchvision's warning)
from open_clip.loss import ClipLoss  # noqa: E402
from open_clip_train.scheduler import cosine_lr  # noqa: E402


@dataclass
class _Loop:
    """The contrastive loop's fixed inputs, its step counter, and what it records."""

    cfg: TrainConfig
    device: torch.device
    clip: torch.nn.Module
    heads: torch.nn.Module
    tokenizer: Any
    text_rng: random.Random
    gen: torch.Generator
    bar: Progress
    titles: list[str]
    batch: int
    steps_per_epoch: int
    total_steps: int
    groups: list[dict]
    augment: Augment | None
    loss_fn: ClipLoss
    eval_every: int = 0
    pick_rng: random.Random = field(default_factory=random.Random)
    step: int = 0
    step_losses: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", **held-out metrics}
    best: dict[str, Any] | None = None  # the best evaluation after step 0
    best_state: dict[str, dict[str, torch.Tensor]] | None = None
    since_best: int = 0
    stopped: str | None = None  # why training ended before total_steps


def train(
    spec: ModelSpec,
    catalog: str | Path | Catalog,
    out: str | Path,
    cfg: TrainConfig | None = None,
    *,
    spec_dir: Path | None = None,
    init_checkpoint: str | Path | None = None,
    progress: bool = True,
    log: Any = None,
) -> TrainResult:
    """Train ``spec``'s model on the catalog's train split and write a lenscope checkpoint to ``out``
    (unless it is worse than its start on held-out products and ``cfg.force`` is off: then
    ``TrainResult.written`` is False and nothing is written).

    ``init_checkpoint`` (a lenscope or open_clip checkpoint) overrides the spec's own checkpoint;
    with neither, training starts from the spec's seeded random init. ``log`` hears the notes
    (label sets, split, early stop, interruption) as they happen.
    """
    t_start = time.perf_counter()
    cfg = cfg or TrainConfig()
    out = Path(out)
    say = log or (lambda message: None)
    data = read_data(spec, catalog, cfg)
    for note in data.notes:
        say(note)
    spec = data.labels.spec_for(spec)
    spec, model, device = init_model(spec, cfg, spec_dir, init_checkpoint,
                                      fresh_heads=cfg.fresh_heads or data.labels.source != "spec")

    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    text_rng = random.Random(cfg.seed)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=spec.context_length)

    with Progress(progress) as bar:
        views = preload_views(data, spec, cfg, tokenizer, bar)
        clip, heads = model.clip.to(device), model.heads.to(device)
        start = _start_report(model, clip, data, views, device)
        loop = _setup_loop(clip, heads, cfg, device, spec, data, tokenizer, text_rng, gen, bar)
        t_train = time.perf_counter()
        if loop.total_steps > 0:
            try:
                _run_epochs(loop, views, data, start)
            except KeyboardInterrupt:
                loop.stopped = f"interrupted (Ctrl-C) at step {loop.step} of {loop.total_steps}"
            _finish(loop, views, start)
            if loop.stopped:
                say(loop.stopped + (f"; keeping the best held-out evaluation (step {loop.best['step']})"
                                    if loop.best else ""))
        train_s = time.perf_counter() - t_train
        clip.eval()
        heads.eval()

        t_heads = time.perf_counter()
        heads_info = _train_heads(model, clip, cfg, device, data, views, bar)
        heads_s = time.perf_counter() - t_heads

    model.clip, model.heads = clip.cpu(), heads.cpu()
    model.heads_trained = model.heads_trained or cfg.heads != "none"
    held_out = held_out_report(data, views, loop, start, heads_info)
    write, why = (True, "no held-out products: nothing could be compared") if held_out is None else \
        decide(held_out["start"], held_out["fine_tuned"], cfg.force, held_out.get("heads"))
    if held_out is not None:
        held_out["decision"] = {"written": write, "why": why}
    timing = {"preload_s": views.preload_s, "train_s": train_s, "heads_s": heads_s}
    meta = run_metadata(spec, cfg, model, data, views, loop, heads_info, device, timing, t_start)
    meta["environment"]["precision"] = resolve_precision(cfg, device)
    meta["held_out"] = held_out
    if write:
        save_checkpoint(model, out, extra=meta, half=cfg.save_fp16)
    return TrainResult(out, meta, model, written=write, why=why, spec=spec)


def _start_report(model: LoadedModel, clip: torch.nn.Module, data: TrainData, views: Views,
                  device: torch.device) -> dict[str, Any] | None:
    """The start model on held-out products, before any step (its heads too, when they load)."""
    if not views.monitor:
        return None
    report: dict[str, Any] = {"retrieval": evaluate(clip, views.val, device)}
    if model.heads_trained and data.val_targets is not None:
        emb = embed_images(clip, views.val["image"], device).to(device)
        report["heads"] = head_accuracy(model, emb, data.val_targets.to(device))
    return report


def _setup_loop(clip: torch.nn.Module, heads: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                spec: ModelSpec, data: TrainData, tokenizer: Any, text_rng: random.Random, gen: torch.Generator,
                bar: Progress) -> _Loop:
    """Apply the strategy, size the batches and steps, and group the trainable parameters."""
    train_rows = data.train_rows
    apply_strategy(clip, cfg)
    for p in heads.parameters():
        p.requires_grad = cfg.heads == "joint"
    titles = [r.title for r in train_rows]
    batch = min(cfg.batch_size, len(train_rows))
    steps_per_epoch = len(train_rows) // batch
    total_steps = cfg.steps if cfg.steps is not None else max(cfg.epochs * steps_per_epoch, cfg.min_steps)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    named = list(clip.named_parameters()) + [(f"heads.{n}", p) for n, p in heads.named_parameters()]
    groups = [g for g in param_groups(named, cfg.weight_decay) if g["params"]]
    augment = Augment(spec, gen, cfg.augment_style) if cfg.augment else None
    loss_fn = ClipLoss()
    eval_every = 0 if cfg.eval_every == 0 or not data.val_rows else (cfg.eval_every or max(1, total_steps // 20))
    return _Loop(cfg, device, clip, heads, tokenizer, text_rng, gen, bar, titles, batch, steps_per_epoch,
                 total_steps, groups, augment, loss_fn, eval_every, random.Random(cfg.seed + 1))


def _run_epochs(loop: _Loop, views: Views, data: TrainData, start: dict[str, Any] | None) -> None:
    """Passes over the train split until the step budget is spent (or early stopping): AdamW with
    open_clip_train's cosine schedule, a summary per pass, held-out evaluations on the way."""
    cfg = loop.cfg
    opt = torch.optim.AdamW(loop.groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = cosine_lr(opt, cfg.lr, min(cfg.warmup_steps, loop.total_steps // 2), loop.total_steps)
    tick = loop.bar.task(f"training ({cfg.strategy})", loop.total_steps)
    if start is not None:
        loop.evals.append({"step": 0, **start["retrieval"]})
        loop.bar.log(f"start model on {len(data.val_rows)} held-out products: {_metrics(start['retrieval'])}")
    epoch = 0
    while loop.step < loop.total_steps and loop.stopped is None:
        t_epoch = time.perf_counter()
        loop.clip.train()
        loop.heads.train(cfg.heads == "joint")
        order = torch.randperm(len(data.train_rows), generator=loop.gen)
        sums, n_steps = _run_steps(loop, views, data.targets, order, opt, sched, tick, epoch)
        summary: dict[str, Any] = {"epoch": epoch + 1, "steps": n_steps,
                                   **{k: round(v / max(n_steps, 1), 5) for k, v in sums.items() if k != "lr"},
                                   "lr_end": loop.step_losses[-1]["lr"] if loop.step_losses else None,
                                   "logit_scale": round(float(loop.clip.logit_scale.detach().exp()), 3),
                                   "seconds": round(time.perf_counter() - t_epoch, 2)}
        loop.epochs.append(summary)
        if loop.total_steps // max(loop.steps_per_epoch, 1) <= 60:  # a pass per line, unless passes are tiny
            loop.bar.log(describe_epoch(summary))
        epoch += 1


def _metrics(m: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in m.items())


def _evaluate(loop: _Loop, views: Views) -> None:
    """One held-out evaluation: keep the weights if it is the best after step 0, count patience."""
    m = evaluate(loop.clip, views.val, loop.device)
    loop.evals.append({"step": loop.step, **m})
    if loop.best is None or m["score"] > loop.best["score"]:
        loop.best = {"step": loop.step, **m}
        loop.best_state = {"clip": {k: v.detach().clone() for k, v in loop.clip.state_dict().items()},
                           "heads": {k: v.detach().clone() for k, v in loop.heads.state_dict().items()}}
        loop.since_best = 0
    else:
        loop.since_best += 1
        if loop.cfg.patience and loop.since_best >= loop.cfg.patience:
            loop.stopped = (f"early stop at step {loop.step} of {loop.total_steps}: {loop.since_best} held-out "
                            f"evaluations without a gain on step {loop.best['step']}'s score {loop.best['score']:.3f}")


def _finish(loop: _Loop, views: Views, start: dict[str, Any] | None) -> None:
    """Evaluate the last step if it was not, then put the best evaluation's weights back."""
    if start is None or loop.eval_every == 0:
        return
    if loop.step > 0 and loop.evals[-1]["step"] != loop.step:
        _evaluate(loop, views)
    if loop.best_state is not None and loop.best is not None and loop.best["step"] != loop.step:
        loop.clip.load_state_dict(loop.best_state["clip"])
        loop.heads.load_state_dict(loop.best_state["heads"])
    loop.best_state = None


def _run_steps(loop: _Loop, views: Views, targets: torch.Tensor | None, order: torch.Tensor,
               opt: torch.optim.Optimizer, sched: Any, tick: Any, epoch: int) -> tuple[dict[str, float], int]:
    """One pass's optimizer steps over ``order``; returns the summed records and the step count."""
    cfg = loop.cfg
    sums: dict[str, float] = {}
    n_steps = 0
    for b in range(loop.steps_per_epoch):
        if loop.step >= loop.total_steps or loop.stopped is not None:
            break
        idx = order[b * loop.batch:(b + 1) * loop.batch]
        lr = sched(loop.step)
        x2, sel = _second_view(loop, views, idx)
        y = _view_targets(cfg, views, targets, idx, sel)
        parts = _train_step(loop.clip, loop.heads, loop.loss_fn, cfg, loop.device, views.images, x2, idx,
                            loop.titles, loop.tokenizer, loop.text_rng, loop.augment, y)
        loss = parts.pop("_total")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_([p for g in loop.groups for p in g["params"]], cfg.grad_clip_norm)
        opt.step()
        with torch.no_grad():
            loop.clip.logit_scale.clamp_(0, math.log(100))
        record = {k: round(float(v.detach()), 5) for k, v in parts.items()}
        record["lr"] = lr
        loop.step_losses.append(record)
        for k, v in record.items():
            sums[k] = sums.get(k, 0.0) + v
        n_steps += 1
        loop.step += 1
        if loop.eval_every and loop.step % loop.eval_every == 0:
            _evaluate(loop, views)
            loop.bar.log(f"step {loop.step}: held-out {_metrics({k: v for k, v in loop.evals[-1].items() if k != 'step'})}")
        best = f"  held-out {loop.evals[-1]['score']:.3f} (best {loop.best['score']:.3f} @ {loop.best['step']})" \
            if loop.best else ""
        tick(status=f"pass {epoch + 1} loss {record['loss']:.3f}{best}")
    return sums, n_steps


def _second_view(loop: _Loop, views: Views, idx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each product's second image: one of its other images (drawn when it has several), else its main
    one; and which row of ``views.others`` each is (-1: the main one; None: no other images at all)."""
    if not loop.cfg.two_view:
        return None, None
    x2 = views.images[idx]
    if views.others is None:
        return x2, None
    pick = []
    for p in idx.tolist():
        opts = views.other_index[p]
        pick.append(opts[0] if len(opts) == 1 else opts[loop.pick_rng.randrange(len(opts))] if opts else -1)
    sel = torch.tensor(pick, dtype=torch.long)
    has = sel >= 0
    if bool(has.all()):
        return views.others[sel], sel
    x2 = x2.clone()
    x2[has] = views.others[sel[has]]
    return x2, sel


def _view_targets(cfg: TrainConfig, views: Views, targets: torch.Tensor | None, idx: torch.Tensor,
                  sel: torch.Tensor | None) -> torch.Tensor | None:
    """Joint heads: the labels of each view, the main images' then the second views' (an other image
    is labelled with what it shows: its own labels where the catalog gives them)."""
    if cfg.heads != "joint" or targets is None:
        return None
    y = targets[idx]
    if not cfg.two_view:
        return y
    y2 = y
    if sel is not None and views.other_targets is not None:
        has = sel >= 0
        y2 = y.clone()
        y2[has] = views.other_targets[sel[has]]
    return torch.cat([y, y2])


def _train_step(clip, heads, loss_fn, cfg: TrainConfig, device, images, second, idx, titles, tokenizer,
                text_rng: random.Random, augment, view_targets) -> dict[str, torch.Tensor]:
    x1 = images[idx].to(device)
    views = [augment(x1) if augment else x1]
    if cfg.two_view:
        x2 = second.to(device)
        views.append(augment(x2) if augment else x2)
    caps = [titles[i] for i in idx.tolist()]
    if cfg.caption_word_dropout > 0:
        caps = [drop_words(c, cfg.caption_word_dropout, text_rng) for c in caps]
    tokens = tokenizer(caps).to(device)
    n = len(idx)
    with autocast(cfg, device):
        img_all = clip.encode_image(torch.cat(views), normalize=True)
        txt = clip.encode_text(tokens, normalize=True)
        scale = clip.logit_scale.exp()
        img = img_all[:n]
        parts = {"clip": loss_fn(img, txt, scale)}
        total = parts["clip"]
        if cfg.two_view and cfg.image_image_weight > 0:
            parts["image_image"] = loss_fn(img_all[n:], img, scale)
            total = total + cfg.image_image_weight * parts["image_image"]
        if cfg.heads == "joint":
            emb = img_all.float()
            parts["attributes"] = attribute_loss(heads, emb, view_targets.to(device))
            total = total + cfg.attribute_weight * parts["attributes"]
    parts["loss"] = total.detach()
    parts["_total"] = total
    return parts


def _train_heads(model: LoadedModel, clip: torch.nn.Module, cfg: TrainConfig, device: torch.device, data: TrainData,
                 views: Views, bar: Progress) -> dict[str, Any]:
    """Frozen mode: fit the heads on embeddings of the finished model. Joint mode: measure them."""
    heads_info: dict[str, Any] = {"mode": cfg.heads, "trained": cfg.heads != "none"}
    targets, val_targets, val = data.targets, data.val_targets, views.val
    if cfg.heads == "frozen":
        for p in clip.parameters():
            p.requires_grad = False
        feats = [embed_images(clip, views.images, device)]
        tgts = [targets]
        if views.others is not None:  # each labelled with what it shows (its own labels, else its product's)
            feats.append(embed_images(clip, views.others, device))
            tgts.append(views.other_targets)
        val_pair = None
        if val_targets is not None and "image" in val:
            val_pair = (embed_images(clip, val["image"], device).to(device), val_targets.to(device))
        tick = bar.task("heads on frozen embeddings", cfg.heads_epochs)
        start_state = {k: v.detach().clone() for k, v in model.heads.state_dict().items()} \
            if model.heads_trained and val_pair is not None else None  # the start's own heads, same label sets
        heads_info.update(fit_heads(model, torch.cat(feats).to(device), torch.cat(tgts).to(device), cfg,
                                    val_pair, tick))
        if start_state is not None and val_pair is not None:
            kept = keep_better_start_heads(model, start_state, val_pair, heads_info["val_accuracy"])
            if kept:
                heads_info["kept_start_heads"] = kept
                heads_info["val_accuracy"].update({n: k["start_head"] for n, k in kept.items()})
                bar.log("start's head kept (at least as accurate on held-out products as the refitted one): " +
                        ", ".join(f"{n} {k['start_head']:.3f} vs refitted {k['refit']:.3f}" for n, k in kept.items()))
    elif cfg.heads == "joint" and val_targets is not None and "image" in val:
        heads_info["val_accuracy"] = head_accuracy(
            model, embed_images(clip, val["image"], device).to(device), val_targets.to(device))
    return heads_info
