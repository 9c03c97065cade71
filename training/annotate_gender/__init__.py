"""`agegender annotate-gender train | label | review | export`: gender labels for MegaAge-Asian, the paper's way.

The paper trained four classifiers (InceptionV3, Xception, ResNet50, DenseNet201) on AAF, kept a MegaAge-Asian
gender label where all four agree and annotated the rest by hand. Here:

    agegender annotate-gender train  --root AAF_DIR         K classifiers on AAF's train split (progress, checkpoints,
                                                              --resume); their agreement on AAF val is reported
    agegender annotate-gender label  --root MEGAAGE_DIR     every image labelled; disagreements -> review queue
    agegender annotate-gender review                        local review page (127.0.0.1): m / f / s per face
    agegender annotate-gender export                        gender_annotation.csv for the MegaAge-Asian adapter

All four share a work folder (--workdir, default runs/annotate-gender); see consensus.py for its layout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_WORKDIR = "runs/annotate-gender"


def _command_error():
    from agegender_ros.cli import CommandError

    return CommandError


def _names(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise _command_error()(f"--models {text}: a classifier is named twice")
    return names


def _validate(names: list[str]) -> None:
    from . import classifiers
    from .timm_import import TimmUnavailable

    for name in names:
        try:
            classifiers.build(name)
        except (ValueError, TimmUnavailable) as error:
            raise _command_error()(str(error)) from error


def _split(data, seed: int):
    """(train index, val index): the dataset's official split where it has one, else a seeded 80/20."""
    import numpy as np

    from training.datasets import random_split

    train = np.flatnonzero(data.splits == "train")
    val = np.flatnonzero(np.isin(data.splits, ["val", "test"]))
    if len(train) and len(val):
        return train, val
    train, val = random_split(list(data.paths), 0.2, seed)
    return np.asarray(train, np.int64), np.asarray(val, np.int64)


def cmd_train(args) -> int:
    import numpy as np

    from training.cli import load_dataset

    from . import classifiers, consensus

    CommandError = _command_error()
    names = _names(args.models)
    if not names:
        raise CommandError("--models: name at least one classifier")
    _validate(names)
    workdir = Path(args.workdir)
    data = load_dataset(args.dataset, args.root, args.detector, progress=not args.no_progress)
    train_index, val_index = _split(data, args.split_seed)
    train_set, val_set = data.subset(train_index), data.subset(val_index)
    print(f"{args.dataset}: {len(train_set)} train / {len(val_set)} val faces; classifiers: {', '.join(names)}",
          file=sys.stderr)
    results = []
    for k, name in enumerate(names, 1):
        config = classifiers.ClassifierConfig(name=name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                              weight_decay=args.weight_decay, seed=args.seed,
                                              split_seed=args.split_seed,
                                              augment=not args.no_augment, device=args.device, threads=args.threads)
        out_dir = classifiers.classifier_dir(workdir, name)
        if args.resume and classifiers.finished(workdir, config) and (out_dir / "metrics.json").is_file():
            print(f"[{k}/{len(names)}] {name}: already trained ({out_dir}), kept", file=sys.stderr)
            results.append(json.loads((out_dir / "metrics.json").read_text()))
            continue
        print(f"[{k}/{len(names)}] {name}: {classifiers.describe(name)}", file=sys.stderr)
        try:
            result = classifiers.train_classifier(config, train_set.crops, train_set.genders, val_set.crops,
                                                  val_set.genders, out_dir, resume=args.resume,
                                                  progress=not args.no_progress)
        except ValueError as error:
            raise CommandError(f"{name}: {error}") from error
        print(f"[{k}/{len(names)}] {name}: val accuracy {result['metrics']['val_acc']:.4f} "
              f"({result['metrics']['train_seconds'] / 60:.1f} min)", file=sys.stderr)
        results.append(result)

    probs = []
    for name in names:
        with np.load(classifiers.classifier_dir(workdir, name) / "val_predictions.npz") as predictions:
            probs.append(predictions["p_male"])
    report = consensus.agreement_report(names, np.stack(probs, 1), val_set.genders)
    report.update({"dataset": args.dataset, "root": str(args.root), "split": "val", "epochs": args.epochs,
                   "train_minutes": {r["name"]: round(r["metrics"]["train_seconds"] / 60, 2) for r in results},
                   "params": {r["name"]: r["metrics"]["params"] for r in results},
                   "input_size": {r["name"]: r["metrics"]["input_size"] for r in results}})
    workdir.mkdir(parents=True, exist_ok=True)
    consensus._write_json(workdir / consensus.SET_FILE, {"classifiers": names, "dataset": args.dataset,
                                                         "root": str(args.root), "detector": args.detector})
    consensus._write_json(workdir / consensus.AAF_REPORT_FILE, report)
    print(json.dumps(report))
    return 0


def _trained_set(workdir: Path, models: str | None) -> list[str]:
    from . import consensus

    names = _names(models)
    if not names:
        set_file = workdir / consensus.SET_FILE
        if not set_file.is_file():
            raise _command_error()(f"{set_file}: no trained classifiers; run `agegender annotate-gender train` "
                                   "(or name them with --models)")
        names = json.loads(set_file.read_text())["classifiers"]
    return names


def _face_boxes(paths, detected, stored_boxes, indices, progress: bool = True):
    """{index: [x1, y1, x2, y2] or None} for the given images: the face box the preprocessing cache stored for the
    crop it made (clipped to the photo), for the review page to outline; None where the cache found no face (the
    whole image was judged) or the photo can no longer be read."""
    from agegender_ros import faces

    indices = [int(i) for i in indices]
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="locate queued faces", unit="img")
    boxes = {}
    for i in indices:
        boxes[i] = None
        if not detected[i]:
            continue
        try:
            h, w = faces.read_image(paths[i]).shape[:2]
        except faces.ImageReadError:
            continue
        x1, y1, x2, y2 = (float(v) for v in stored_boxes[i])
        boxes[i] = [max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)]
    return boxes


def cmd_label(args) -> int:
    import numpy as np
    import torch

    from training.cli import load_dataset
    from training.train import pick_device

    from . import classifiers, consensus

    CommandError = _command_error()
    workdir = Path(args.workdir)
    names = _trained_set(workdir, args.models)
    models = []
    for name in names:
        path = classifiers.classifier_dir(workdir, name) / "model.pt"
        if not path.is_file():
            raise CommandError(f"{path}: classifier {name!r} is not trained (run annotate-gender train)")
        models.append(classifiers.load(path))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data = load_dataset("megaage_asian", args.root, args.detector, progress=not args.no_progress)
    probs = np.stack([classifiers.predict(model.to(device), data.crops, device, args.batch_size,
                                          progress=None if args.no_progress else f"label with {name}")
                      for name, model in zip(names, models)], 1)
    image_names = [Path(p).name for p in data.paths]
    queued = np.flatnonzero(consensus.queue_mask(probs, args.min_confidence))
    boxes = _face_boxes(data.paths, data.detected, data.boxes, queued, not args.no_progress)
    summary = consensus.write_labels(workdir, names, data.splits, image_names, data.paths, probs,
                                     min_confidence=args.min_confidence, root=args.root, failed=data.failed,
                                     boxes=boxes)
    answers = consensus.AnswerLog(workdir / consensus.ANSWERS_FILE).read()
    queue_ids = {item["id"] for item in consensus.read_queue(workdir)["items"]}
    summary["already_answered"] = len(queue_ids & set(answers))
    shown = {k: v for k, v in summary.items() if k != "unreadable"}
    shown["unreadable"] = len(summary["unreadable"])
    print(json.dumps(shown))
    return 0


def _port(text: str) -> int:
    """--port's value: 0-65535 (0: any free port); anything else is a one-line CommandError."""
    text = str(text).strip()
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise _command_error()(f"--port {text!r}: not a port number (0-65535; 0 picks a free port)")
    return int(text)


def cmd_review(args) -> int:
    from . import review

    CommandError = _command_error()
    port = _port(args.port)
    try:
        server = review.make_server(Path(args.workdir), args.host, port)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from error
    except OSError as error:
        raise CommandError(f"cannot listen on {args.host}:{port}: {error.strerror or error}") from error
    state = server.RequestHandlerClass.review.state()
    url = review.url_of(server)
    print(f"review page: {url}  ({state['answered']} of {state['total']} answered; Ctrl-C stops, "
          "answers are saved as they are given)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    state = server.RequestHandlerClass.review.state()
    print(f"{state['answered']} of {state['total']} answered", flush=True)
    return 0


def cmd_export(args) -> int:
    from . import consensus

    try:
        result = consensus.export(Path(args.workdir), Path(args.out) if args.out else None)
    except FileNotFoundError as error:
        raise _command_error()(str(error)) from error
    print(json.dumps(result))
    if result["unreviewed"]:
        print(f"note: {result['unreviewed']} queued faces are not reviewed yet (written as unknown); "
              "run `agegender annotate-gender review` and export again", file=sys.stderr)
    print(f"use it with: agegender train --dataset megaage_asian --root MEGAAGE_DIR --gender-file {result['file']}",
          file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    from .classifiers import DEFAULT_SET, PAPER_SET, ClassifierConfig

    parent = sub.add_parser(
        "annotate-gender", help="gender labels for MegaAge-Asian: K classifiers trained on AAF, consensus, review",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parent.add_subparsers(dest="annotate_command", metavar="{train,label,review,export}")
    commands.required = True

    def workdir(p):
        p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                       help=f"work folder: classifiers, labels, queue, answers (default {DEFAULT_WORKDIR})")

    def compute(p):
        p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
        p.add_argument("--detector", default="scrfd", choices=["scrfd", "blazeface", "haar"],
                       help="face detector used to preprocess (the crops are cached per detector)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    defaults = ClassifierConfig(name="")
    p = commands.add_parser("train", help="train K gender classifiers on AAF (checkpoints; --resume)")
    p.add_argument("--root", required=True, help="AAF root in its published layout")
    p.add_argument("--dataset", default="aaf", choices=["aaf", "utkface", "morph2"],
                   help="labelled dataset to train on (default aaf, its official train/val split)")
    p.add_argument("--models", default=",".join(DEFAULT_SET),
                   help="comma-separated classifiers: presets, timm names (timm:NAME), our nets (ours:NAME); "
                        f"the paper's four: {','.join(PAPER_SET)} (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="initialisation, augmentation and sampling")
    p.add_argument("--split-seed", type=int, default=0,
                   help="the 80/20 train/val split of a dataset without an official one (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="keep finished classifiers and continue an interrupted one from its checkpoint")
    workdir(p)
    compute(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("label", help="label every MegaAge-Asian image; disagreements go to the review queue")
    p.add_argument("--root", required=True, help="MegaAge-Asian root in its published layout")
    p.add_argument("--models", help="comma-separated trained classifiers (default: the set `train` made)")
    p.add_argument("--min-confidence", type=float, default=0.0,
                   help="also queue unanimous faces whose mean probability is below this (default 0: the paper's "
                        "rule, keep every unanimous label)")
    p.add_argument("--batch-size", type=int, default=256)
    workdir(p)
    compute(p)
    p.set_defaults(func=cmd_label)

    p = commands.add_parser("review", help="serve the review page on 127.0.0.1 (m / f / s per face)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (127.0.0.1, ::1, localhost)")
    p.add_argument("--port", default="8765",  # checked by cmd_review: a bad value is a one-line error, exit 2
                   help="port (0: any free port; default %(default)s)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    workdir(p)
    p.set_defaults(func=cmd_review)

    p = commands.add_parser("export", help="write the gender annotation CSV the MegaAge-Asian adapter reads")
    p.add_argument("--out", help="output file (default WORKDIR/gender_annotation.csv)")
    workdir(p)
    p.set_defaults(func=cmd_export)
