"""Evaluation protocols: which images train and which test, per fold.

  official        the dataset's own split (AAF train/val, MegaAge-Asian train/test, CelebA Train/Validation+Test)
  random80        seeded 80/20 subject-exclusive split (UTKFace, which has no official one: one photo = one subject)
  kfold5          the paper's MORPH-II protocol: 5 random image-level folds, mean over folds
  kfold5-subject  5 subject-exclusive folds (no person in both train and test) - what careful work reports
  lopo            FG-NET leave-one-person-out: one fold per subject, MAE pooled over all images
"""
from __future__ import annotations

from .cache import PreprocessedSet
from .datasets import Record, kfold, leave_one_subject_out, official_split, random_split

PROTOCOLS = ("official", "random80", "kfold5", "kfold5-subject", "lopo")
DEFAULT_PROTOCOL = {"aaf": "official", "utkface": "random80", "morph2": "kfold5", "fgnet": "lopo",
                    "megaage_asian": "official", "celeba_gender": "official"}
# The paper's table each protocol reproduces, for `agegender report`.
PAPER_TABLE = {("morph2", "kfold5"): "Table 1/3 (MORPH-II, 5-fold)", ("fgnet", "lopo"): "Table 2/4 (FG-NET, LOPO)",
               ("megaage_asian", "official"): "Table 5 (MegaAge-Asian)"}


def as_records(data: PreprocessedSet) -> list[Record]:
    return [Record(str(p), float(a), int(g), str(s), str(sp))
            for p, a, g, s, sp in zip(data.paths, data.ages, data.genders, data.subjects, data.splits)]


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
    if protocol == "lopo":
        return [(f"subject-{subject}", train, test) for subject, train, test in leave_one_subject_out(records)]
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
