"""`lenscope model train` on a real catalog (tests/data/real-products: studio and lifestyle photos,
free-text labels the shipped spec does not know, no split column) from the shipped checkpoint.

Default tier: a 15-product slice, a few steps, end to end through the CLI: label sets from the
catalog, a product-level held-out split, the held-out table printed, a checkpoint and its spec
written; and a fine-tune made worse on purpose (a destructive learning rate) is refused without
--force and nothing is written. Slow tier: the default command on the whole catalog must write a
fine-tune that beats its start on the held-out products (the table is printed with -s).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from typer.testing import CliRunner  # noqa: E402

from lenscope.client.catalog.reader import read_catalog  # noqa: E402
from lenscope.client.cli.app import app  # noqa: E402
from lenscope.client.core.modelspec import load_spec  # noqa: E402
from lenscope.client.eval.thumbnail import recall_at  # noqa: E402
from lenscope.export.training.config import TrainConfig, TrainError  # noqa: E402
from lenscope.export.training.heldout import decide, table_rows  # noqa: E402
from lenscope.export.training.labels import choose_labels, label_key  # noqa: E402
from lenscope.export.training.split import make_split  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "tests" / "data" / "real-products"
SHIPPED = REPO / "export" / "weights" / "lenscope-tiny.pt"
SPEC = load_spec(REPO / "export" / "specs" / "lenscope-tiny.json").model_copy(update={"checkpoint": None})
TINY = ["--batch-size", "8", "--precision", "fp32"]


def _slice(dest: Path, source: str = "solidus") -> Path:
    """The catalog's rows of one source (15 products, 23 images, variant families), images copied along."""
    with (REAL / "products.csv").open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == source]
    for r in rows:
        (dest / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / r["image"], dest / r["image"])
    path = dest / "products.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _run(*args: str):
    return CliRunner().invoke(app, ["model", "train", *args], env={"COLUMNS": "160"})


# ---------------------------------------------------------------------------------------- pure parts


def test_labels_match_ignoring_case_and_spaces_and_come_from_the_catalog_when_they_do_not_fit() -> None:
    cat = read_catalog(REAL / "products.csv")
    assert label_key("  Hoodies  &  Sweatshirts ") == label_key("hoodies & sweatshirts")
    choice = choose_labels(SPEC, cat, list(cat.rows), TrainConfig())
    assert choice.source == "catalog"
    assert {a.name for a in choice.attributes} == {"category", "color"}  # the spec's names the catalog has
    assert "jeans" in choice.spec_for(SPEC).attribute("category").labels
    assert any("not in the spec's sets" in n for n in choice.notes)
    with pytest.raises(TrainError, match=r"spec attribute\(s\) \['pattern'\] are not attributes"):
        choose_labels(SPEC, cat, list(cat.rows), TrainConfig(labels="spec"))
    two = SPEC.model_copy(update={"attributes": SPEC.attributes[:2]})
    with pytest.raises(TrainError, match=r"products\.csv:\d+: product '[^']+': category='cap'"):
        choose_labels(two, cat, list(cat.rows), TrainConfig(labels="spec"))
    fitting = SPEC.model_copy(update={"attributes": tuple(
        a.model_copy(update={"labels": tuple(x.upper() for x in choice.spec_for(SPEC).attribute(a.name).labels)})
        for a in choice.attributes)})
    assert choose_labels(fitting, cat, list(cat.rows), TrainConfig()).source == "spec"  # CAP fits cap


def test_an_images_own_labels_are_learnt_for_that_image_and_join_the_label_sets(tmp_path: Path) -> None:
    """The red shot of a black cap is labelled red (its own label, docs/catalog.md), for the heads on
    frozen embeddings and for the joint loss's second view; a spec that lacks "red" names that image."""
    from types import SimpleNamespace

    from lenscope.export.training.labels import attribute_targets, catalog_labels, image_targets
    from lenscope.export.training.loop import _view_targets

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"product_id": "cap", "title": "Cap", "color": "black", "images": [
        {"path": "black.png", "role": "main"}, {"path": "red.png", "attributes": {"color": "Red"}},
        {"path": "back.png", "role": "back"}]}) + "\n" + json.dumps(
        {"product_id": "tee", "title": "Tee", "color": "white", "image": "tee.png"}) + "\n", encoding="utf-8")
    cat = read_catalog(path)
    cap = cat.get("cap")
    assert catalog_labels(cat, list(cat.rows), "color") == ("Red", "black", "white")
    color = SPEC.model_copy(update={"attributes": (SPEC.attribute("color").model_copy(
        update={"labels": ("black", "red", "white")}),)})
    [attr] = color.attributes
    assert image_targets(color.attributes, [(cap, 0), (cap, 1), (cap, 2)]).tolist() == [[0], [1], [0]]
    assert attribute_targets(color.attributes, list(cat.rows)).tolist() == [[0], [2]]
    no_red = color.model_copy(update={"attributes": (attr.model_copy(update={"labels": ("black", "white")}),)})
    with pytest.raises(TrainError, match=r"c\.jsonl:1: product 'cap': image 'red\.png': color='Red'"):
        choose_labels(no_red, cat, list(cat.rows), TrainConfig(labels="spec"))
    # joint heads: product 0's second view is its red shot (row 0 of the other images), product 1 has none
    views = SimpleNamespace(other_targets=image_targets(color.attributes, [(cap, 1), (cap, 2)]))
    y = _view_targets(TrainConfig(heads="joint"), views, attribute_targets(color.attributes, list(cat.rows)),
                      torch.tensor([0, 1]), torch.tensor([0, -1]))
    assert y.tolist() == [[0], [2], [1], [2]]


def test_a_start_head_at_least_as_accurate_as_the_refitted_one_is_put_back() -> None:
    """Heads refitted on a small catalog lost to the start's (seed 3: category 0.80 -> 0.70): per
    attribute, the start's head comes back where it is at least as accurate on the held-out products."""
    from types import SimpleNamespace

    from lenscope.export.model import AttributeHeads
    from lenscope.export.training.heads import keep_better_start_heads

    torch.manual_seed(0)
    emb = torch.eye(4)[[0, 1, 2, 3, 0, 1]]
    targets = torch.tensor([[0, 0], [1, 1], [0, 0], [1, 1], [0, 0], [1, 1]])
    heads = AttributeHeads(4, [("a", 2), ("b", 2)])
    with torch.no_grad():
        for name, sign in (("a", 1.0), ("b", -1.0)):  # a: right on every row; b: wrong on every row
            heads.heads[name].weight.copy_(sign * torch.tensor([[1.0, -1, 1, -1], [-1, 1, -1, 1]]))
            heads.heads[name].bias.zero_()
    start_state = {k: v.clone() for k, v in heads.state_dict().items()}
    with torch.no_grad():  # the refit: a now wrong, b now right
        for name in ("a", "b"):
            heads.heads[name].weight.neg_()
    model = SimpleNamespace(heads=heads)
    kept = keep_better_start_heads(model, start_state, (emb, targets), {"a": 0.0, "b": 1.0})
    assert kept == {"a": {"refit": 0.0, "start_head": 1.0}}
    assert torch.equal(heads.heads["a"].weight, start_state["heads.a.weight"])  # put back
    assert not torch.equal(heads.heads["b"].weight, start_state["heads.b.weight"])  # the better refit stays
    report = {"queries": {"photo": 0, "title": 0}, "start": {}, "fine_tuned": {}, "thumbnail": {},
              "heads": {"a": {"n": 6, "start": 1.0, "fine_tuned": 1.0, "kept_start_head": 0.0}}}
    assert ("head a acc.", "6", "1.000", "1.000 (start's head; refitted 0.000)", "-") in table_rows(report)


def test_held_out_split_keeps_variant_families_whole_and_is_seeded() -> None:
    cat = read_catalog(REAL / "products.csv")
    a, b = make_split(cat, TrainConfig(holdout=0.3)), make_split(cat, TrainConfig(holdout=0.3))
    assert [r.product_id for r in a.held_out] == [r.product_id for r in b.held_out]
    held = {r.product_id for r in a.held_out}
    assert held and len(a.train) + len(held) == len(cat)
    for r in cat.rows:
        if r.variant_of:
            assert (r.product_id in held) == (r.variant_of in held), r.product_id


def test_recall_counts_ties_and_nan_as_misses() -> None:
    keys = np.eye(3, dtype=np.float32)
    assert recall_at(keys, keys, np.arange(3)) == {"R@1": 1.0, "R@10": 1.0}
    flat = np.ones((3, 3), dtype=np.float32)
    assert recall_at(flat, flat, np.arange(3))["R@1"] == 0.0  # a collapsed model finds nothing
    assert recall_at(np.full((3, 3), np.nan, dtype=np.float32), keys, np.arange(3)) == {"R@1": 0.0, "R@10": 0.0}


def test_decision_refuses_a_worse_fine_tune_unless_forced() -> None:
    assert decide({"score": 0.5}, {"score": 0.6}, force=False)[0]
    assert decide({"score": 0.5}, {"score": 0.5}, force=False)[0]
    write, why = decide({"score": 0.5}, {"score": 0.4}, force=False)
    assert not write and "below its start" in why
    assert decide({"score": 0.5}, {"score": 0.4}, force=True)[0]


def test_decision_refuses_a_head_that_lost_accuracy_on_its_own_labels() -> None:
    """Retrieval gained, but the category head (start's label set) fell by more than one product's
    worth: refused unless forced; a head on new labels (no start number) or a small move is not judged."""
    lost = {"category": {"n": 10, "start": 0.9, "fine_tuned": 0.6, "majority": 0.3}}
    write, why = decide({"score": 0.5}, {"score": 0.6}, False, lost)
    assert not write and "head category accuracy 0.600 is below its start's 0.900" in why
    assert decide({"score": 0.5}, {"score": 0.6}, True, lost)[0]
    within = {"category": {"n": 10, "start": 0.9, "fine_tuned": 0.8}}
    fresh = {"color": {"n": 10, "fine_tuned": 0.2, "majority": 0.4}}
    assert decide({"score": 0.5}, {"score": 0.6}, False, {**within, **fresh})[0]


# ---------------------------------------------------------------------------------------- end to end


def test_fine_tune_on_a_real_catalog_slice_prints_the_held_out_table(tmp_path: Path) -> None:
    catalog = _slice(tmp_path / "cat")
    out = tmp_path / "ft.pt"
    res = _run("--catalog", str(catalog), "--init-checkpoint", str(SHIPPED), "--out", str(out),
               "--holdout", "0.3", "--force", "--steps", "2", "--eval-every", "1", *TINY)
    print(res.output)
    assert res.exit_code == 0, res.output
    assert "label sets from the catalog" in res.output and "held out" in res.output
    for row in ("photo->product R@1", "title->product R@10", "head category acc.", "16x16-thumbnail cosine"):
        assert row in res.output, row
    meta = torch.load(out, map_location="cpu", weights_only=True)["meta"]
    report = meta["held_out"]
    assert report["products"] > 0 and report["queries"]["title"] == report["products"]
    assert set(report["start"]) >= {"title R@1", "title R@10", "score"} and report["thumbnail"]
    assert meta["labels"]["source"] == "catalog" and "cap" in meta["labels"]["attributes"]["category"]
    spec = load_spec(tmp_path / "ft.spec.json")
    assert spec.checkpoint == "ft.pt" and "cap" in spec.attribute("category").labels
    assert "white" in spec.attribute("color").labels  # only the bottle's alt shot is white: its own label


def test_a_fine_tune_made_worse_is_refused_without_force(tmp_path: Path) -> None:
    catalog = _slice(tmp_path / "cat")
    out = tmp_path / "worse.pt"
    res = _run("--catalog", str(catalog), "--init-checkpoint", str(SHIPPED), "--out", str(out), "--heads", "none",
               "--holdout", "0.3", "--lr", "50", "--steps", "2", "--eval-every", "2", *TINY)
    print(res.output)
    assert res.exit_code == 2, res.output
    assert "not written" in res.output and "--force" in res.output and "below its start" in res.output
    assert not out.exists() and not (tmp_path / "worse.spec.json").exists()


@pytest.mark.slow
def test_default_fine_tune_on_the_real_catalog_beats_its_start(tmp_path: Path) -> None:
    out = tmp_path / "ft.pt"
    res = _run("--catalog", str(REAL / "products.csv"), "--init-checkpoint", str(SHIPPED), "--out", str(out))
    print(res.output)
    assert res.exit_code == 0, res.output
    report = torch.load(out, map_location="cpu", weights_only=True)["meta"]["held_out"]
    assert report["fine_tuned"]["score"] > report["start"]["score"], report


@pytest.mark.slow  # ~28 s: a fresh interpreter imports torch for the subprocess
def test_ctrl_c_keeps_the_best_checkpoint_so_far_and_says_where(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    catalog = _slice(tmp_path / "cat")
    out = tmp_path / "int.pt"
    cmd = [sys.executable, "-m", "lenscope.client.cli", "model", "train", "--catalog", str(catalog),
           "--init-checkpoint", str(SHIPPED), "--out", str(out), "--heads", "none", "--holdout", "0.3",
           "--force", "--steps", "1000", "--eval-every", "1", "--patience", "0", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "160"})
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "step 1: held-out" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=600)
    output = "".join(lines) + rest
    print(output)
    assert proc.returncode == 0, output
    assert "interrupted (Ctrl-C) at step" in output and "keeping the best held-out evaluation" in output
    assert f"wrote {out}" in output.replace("\n", "") or str(out) in output
    report = torch.load(out, map_location="cpu", weights_only=True)["meta"]["held_out"]
    assert report["stopped"].startswith("interrupted") and report["steps_run"] < 1000
