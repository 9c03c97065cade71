"""Evaluation protocols: which images train and which test, per fold.

  official        the dataset's own split (AAF train/val, MegaAge-Asian train/test, CelebA Train/Validation+Test)
  random80        seeded 80/20 subject-exclusive split (UTKFace, which has no official one: one photo = one subject)
  kfold5          the paper's MORPH-II protocol: 5 random image-level folds, mean over folds
  kfold5-subject  5 subject-exclusive folds (no person in both train and test) - what careful work reports
  lopo            FG-NET leave-one-person-out: one fold per subject, MAE pooled over all images
  dev10           seeded 90/10 split stratified by race and age group (FairFace's train/, whose val/ is reserved
                  for measurements outside the project): the dev set has every race and age as the whole has

random80, dev10 and the k-folds draw their split from a split seed of its own (`--split-seed`, default 0), apart
from the training seed. Every run's model card records the splits it trained on (`splits`, its init weights'
included), so that `evaluate` scores the faces those weights held out and `train --init-weights` refuses weights
that trained on the faces a run holds out (split_conflicts below).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .cache import PreprocessedSet
from .datasets import Record, kfold, leave_one_subject_out, official_split, random_split, stratified_split

PROTOCOLS = ("official", "random80", "kfold5", "kfold5-subject", "lopo", "dev10")
DEFAULT_PROTOCOL = {"aaf": "official", "utkface": "random80", "morph2": "kfold5", "fgnet": "lopo",
                    "megaage_asian": "official", "celeba_gender": "official", "fairface": "dev10"}
# The paper's table each protocol reproduces, for `agegender report`.
PAPER_TABLE = {("morph2", "kfold5"): "Table 1/3 (MORPH-II, 5-fold)", ("fgnet", "lopo"): "Table 2/4 (FG-NET, LOPO)",
               ("megaage_asian", "official"): "Table 5 (MegaAge-Asian)"}


def as_records(data: PreprocessedSet) -> list[Record]:
    return [Record(str(p), float(a), int(g), str(s), str(sp),
                   (float(r[0]), float(r[1])) if r[1] > r[0] else None, str(race))
            for p, a, g, s, sp, r, race in zip(data.paths, data.ages, data.genders, data.subjects, data.splits,
                                               data.age_ranges, data.races)]


def folds(protocol: str, data: PreprocessedSet, seed: int = 0) -> list[tuple[str, list[int], list[int]]]:
    """(fold name, train indices, test indices) for every fold of the protocol."""
    records = as_records(data)
    if protocol == "official":
        train, test = official_split(records)
        if not train or not test:
            raise ValueError("this dataset has no official train/test split; use random80 or kfold5")
        return [("official", train, test)]
    if protocol == "random80":
        train, test = random_split(records, test_fraction=0.2, seed=seed, by_subject=True)
        return [("random80", train, test)]
    if protocol in ("kfold5", "kfold5-subject"):
        return [(f"fold{i}", train, test) for i, (train, test) in
                enumerate(kfold(records, k=5, seed=seed, by_subject=protocol == "kfold5-subject"))]
    if protocol == "dev10":
        train, test = stratified_split(records, test_fraction=0.1, seed=seed)
        return [("dev10", train, test)]
    if protocol == "lopo":
        return [(f"subject-{subject}", train, test) for subject, train, test in leave_one_subject_out(records)]
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


# Protocols whose folds do not depend on the split seed.
SEED_FREE = ("official", "lopo")


def held_out_fingerprint(paths) -> str:
    """Which photos a fold holds out, by file name: the same photos under another root give the same print."""
    digest = hashlib.sha256()
    for name in sorted(Path(str(path)).name for path in paths):
        digest.update(name.encode() + b"\0")
    return digest.hexdigest()[:16]


def split_record(dataset: str, protocol: str, fold: int, fold_name: str, split_seed: int, data: PreprocessedSet,
                 train_index, test_index) -> dict:
    """What a model card keeps of one split a run trained on."""
    return {"dataset": dataset, "protocol": protocol, "fold": fold, "fold_name": fold_name,
            "split_seed": split_seed, "train_faces": len(train_index), "held_out_faces": len(test_index),
            "held_out_sha256": held_out_fingerprint(data.paths[test_index])}


def trained_splits(card: dict) -> list[dict]:
    """The splits whose training side a model learned from (its init weights' included), from its card.

    Cards written before splits were recorded name them only in `training_data` ("aaf:official:official (...)");
    their runs drew the split with the training seed, so that seed is the split seed."""
    if "splits" in card:
        return list(card["splits"])
    seed = (card.get("recipe") or {}).get("seed", 0)
    return [{"dataset": dataset, "protocol": protocol, "fold_name": fold_name, "split_seed": seed}
            for dataset, protocol, fold_name in
            re.findall(r"(\w+):([\w-]+):([^\s(+]+)", str(card.get("training_data", "")))]


def describe_split(split: dict) -> str:
    fold = "" if split["fold_name"] == split["protocol"] else f" {split['fold_name']}"
    seed = "" if split["protocol"] in SEED_FREE else f" (split seed {split['split_seed']})"
    return f"{split['dataset']} {split['protocol']}{fold}{seed}"


def same_split(a: dict, b: dict) -> bool:
    """Whether two split records hold out the same faces (by fingerprint where both have one)."""
    if a["dataset"] != b["dataset"]:
        return False
    if a.get("held_out_sha256") and b.get("held_out_sha256"):
        return a["held_out_sha256"] == b["held_out_sha256"]
    return a["protocol"] == b["protocol"] and a["fold_name"] == b["fold_name"] and (
        a["protocol"] in SEED_FREE or a["split_seed"] == b["split_seed"])


def split_conflicts(trained: list[dict], split: dict) -> list[str]:
    """Why the held-out side of `split` may hold faces that a model which trained on `trained` has seen: one reason
    per trained split of the same dataset that holds out other faces (empty: the held-out faces are clean)."""
    return [f"the weights trained on {describe_split(old)}, which holds out other faces than "
            f"{describe_split(split)}" for old in trained if old["dataset"] == split["dataset"]
            and not same_split(old, split)]


def merge_splits(*lists: list[dict]) -> list[dict]:
    """One record per distinct split, in first-seen order (a run's own, then those it inherits)."""
    merged: list[dict] = []
    for split in (s for splits in lists for s in splits):
        if not any(same_split(split, kept) for kept in merged):
            merged.append(split)
    return merged
