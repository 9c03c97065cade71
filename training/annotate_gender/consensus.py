"""Consensus of K classifiers, the review queue, the answer log and the exported annotation file.

Work folder layout (all written atomically or append-only):
    classifiers/<name>/     checkpoint.pt, model.pt, metrics.json, val_predictions.npz    (train)
    classifiers.json        the trained set, in order; aaf_val_consensus.json: its agreement on AAF val
    labels.csv              one row per labelled image: every classifier's P(male), agreement, label  (label)
    queue.json              the faces to review (disagreements): the classifiers' votes, face box       (label)
    answers.jsonl           one JSON line per answer, appended and fsync'd before the reply            (review)
    gender_annotation.csv   what the MegaAge-Asian adapter reads                                       (export)
"""
from __future__ import annotations

import csv
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import GENDER_FEMALE, GENDER_MALE, GENDER_WORDS, GenderAnnotation, write_gender_annotation

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
QUEUE_FILE = "queue.json"
ANSWERS_FILE = "answers.jsonl"
EXPORT_FILE = "gender_annotation.csv"
SET_FILE = "classifiers.json"
AAF_REPORT_FILE = "aaf_val_consensus.json"
ANSWERS = ("male", "female", "skip")


@dataclass
class Consensus:
    agreed: np.ndarray  # N bool: all K classifiers vote the same way
    label: np.ndarray  # N int: GENDER_MALE / GENDER_FEMALE by the mean P(male) (the vote where agreed)
    confidence: np.ndarray  # N float: mean probability of that label over the K classifiers


def consensus(p_male: np.ndarray) -> Consensus:
    """p_male: N x K probabilities. A face is agreed when all K votes (P >= 0.5 -> male) are the same."""
    p_male = np.asarray(p_male, np.float64)
    if p_male.ndim != 2 or p_male.shape[1] == 0:
        raise ValueError(f"expected N x K probabilities, got shape {p_male.shape}")
    votes = p_male >= 0.5
    agreed = votes.all(1) | (~votes).all(1)
    mean = p_male.mean(1)
    label = np.where(mean >= 0.5, GENDER_MALE, GENDER_FEMALE)
    label = np.where(agreed, np.where(votes[:, 0], GENDER_MALE, GENDER_FEMALE), label)
    confidence = np.where(label == GENDER_MALE, mean, 1.0 - mean)
    return Consensus(agreed, label, confidence)


def agreement_report(names: list[str], p_male: np.ndarray, truth: np.ndarray) -> dict:
    """Per-classifier accuracy, agreement rate, and consensus accuracy on the agreed faces (known truth only)."""
    truth = np.asarray(truth)
    known = truth >= 0
    p_male, truth = np.asarray(p_male)[known], truth[known]
    result = consensus(p_male)
    correct = result.label == truth
    return {
        "n": int(len(truth)),
        "per_model_acc": {name: float(np.mean((p_male[:, k] >= 0.5) == (truth == GENDER_MALE)))
                          for k, name in enumerate(names)},
        "agreement_rate": float(result.agreed.mean()) if len(truth) else None,
        "agreed_n": int(result.agreed.sum()),
        "consensus_acc_on_agreed": float(correct[result.agreed].mean()) if result.agreed.any() else None,
        "consensus_errors_on_agreed": int((~correct[result.agreed]).sum()),
        "mean_vote_acc_all": float(correct.mean()) if len(truth) else None,
        "mean_vote_acc_disagreed": float(correct[~result.agreed].mean()) if (~result.agreed).any() else None,
    }


# --------------------------------------------------------------------------------------------------------------
# labels + queue


def item_id(split: str, name: str) -> str:
    return f"{split}/{name}"


def queue_mask(p_male: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
    """N bool: the faces that go to the review queue (the classifiers disagree, or agree below min_confidence)."""
    result = consensus(p_male)
    return ~result.agreed | (result.confidence < min_confidence)


def write_labels(workdir: Path, names: list[str], splits, image_names, paths, p_male: np.ndarray,
                 min_confidence: float = 0.0, root: str = "", failed=(), boxes=None) -> dict:
    """labels.csv + queue.json from the classifiers' P(male) (N x K); returns the summary (also saved).

    boxes: optional, indexed like paths (a list or a dict; only queued faces are looked up): the detected face
    box [x1, y1, x2, y2] in the image's pixels, or None where no face was found (the whole image was judged).
    Queue items then carry "box" and "detected"; queues written without them still load (no box shown)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = consensus(p_male)
    queued = queue_mask(p_male, min_confidence)
    partial = workdir / (LABELS_FILE + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["split", "name", *[f"p_male:{n}" for n in names], "agreed", "label", "confidence",
                         "queued", "path"])
        for i in range(len(paths)):
            writer.writerow([splits[i], image_names[i], *[f"{p:.4f}" for p in p_male[i]], int(result.agreed[i]),
                             GENDER_WORDS[int(result.label[i])], f"{result.confidence[i]:.4f}", int(queued[i]),
                             paths[i]])
    os.replace(partial, workdir / LABELS_FILE)
    items = []
    for i in np.flatnonzero(queued):
        items.append({"id": item_id(str(splits[i]), str(image_names[i])), "split": str(splits[i]),
                      "name": str(image_names[i]), "path": str(paths[i]),
                      "reason": "low-confidence" if result.agreed[i] else "disagree",
                      "votes": {n: round(float(p_male[i, k]), 4) for k, n in enumerate(names)}})
        if boxes is not None:
            box = boxes[int(i)]
            items[-1]["box"] = None if box is None else [round(float(v), 1) for v in box]
            items[-1]["detected"] = box is not None
    summary = {"root": str(root), "classifiers": list(names), "images": int(len(paths)),
               "agreed": int(result.agreed.sum()),
               "agreement_rate": float(result.agreed.mean()) if len(paths) else None,
               "kept": int((~queued).sum()), "queued": len(items), "min_confidence": min_confidence,
               "kept_male": int(((~queued) & (result.label == GENDER_MALE)).sum()),
               "kept_female": int(((~queued) & (result.label == GENDER_FEMALE)).sum()),
               "unreadable": [list(f) for f in failed], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(workdir / QUEUE_FILE, {**summary, "items": items})
    return summary


def _write_json(path: Path, data) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_queue(workdir: Path) -> dict:
    path = Path(workdir) / QUEUE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no review queue; run `agegender annotate-gender label` first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_labels(workdir: Path) -> list[dict]:
    path = Path(workdir) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels; run `agegender annotate-gender label` first")
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


# --------------------------------------------------------------------------------------------------------------
# answers: append-only, one fsync'd line per answer


class AnswerLog:
    """answers.jsonl: `{"id", "split", "name", "answer", "time"}` per line; the last line for an id wins.

    Each answer is written, flushed and fsync'd before `append` returns, so a crash, a kill or a closed tab
    loses nothing that was acknowledged. A line torn by a crash mid-write is ignored (with a warning) on reading
    and fenced off by a newline before the next append."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def read(self) -> dict[str, str]:
        answers: dict[str, str] = {}
        if not self.path.is_file():
            return answers
        with self.path.open(encoding="utf-8", errors="replace") as file:
            for line_no, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    answer = entry["answer"]
                    if answer not in ANSWERS:
                        raise ValueError(answer)
                except (ValueError, KeyError, TypeError):
                    log.warning("%s:%d: unreadable answer line ignored (torn by a crash?)", self.path, line_no)
                    continue
                answers[entry["id"]] = answer
        return answers

    def append(self, item: dict, answer: str) -> None:
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
        line = json.dumps({"id": item["id"], "split": item["split"], "name": item["name"], "answer": answer,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as file:
                if not new and file.tell() > 0:
                    with self.path.open("rb") as reader:
                        reader.seek(-1, os.SEEK_END)
                        if reader.read(1) != b"\n":
                            file.write(b"\n")
                file.write(line.encode("utf-8"))
                file.flush()
                os.fsync(file.fileno())
            if new:
                _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------------------
# export


def export(workdir: Path, out: Path | None = None) -> dict:
    """Write the annotation file the MegaAge-Asian adapter reads; returns counts by source."""
    workdir = Path(workdir)
    labels = read_labels(workdir)
    answers = AnswerLog(workdir / ANSWERS_FILE).read()
    rows, counts = [], {"classifiers-agree": 0, "manual": 0, "manual-skip": 0, "unreviewed": 0}
    for row in labels:
        key = item_id(row["split"], row["name"])
        if row["queued"] == "0":
            rows.append(GenderAnnotation(row["split"], row["name"], row["label"], float(row["confidence"]),
                                         "classifiers-agree"))
            counts["classifiers-agree"] += 1
            continue
        answer = answers.get(key)
        if answer in ("male", "female"):
            rows.append(GenderAnnotation(row["split"], row["name"], answer, None, "manual"))
            counts["manual"] += 1
        else:
            source = "manual-skip" if answer == "skip" else "unreviewed"
            rows.append(GenderAnnotation(row["split"], row["name"], "unknown", None, source))
            counts[source] += 1
    out = Path(out) if out else workdir / EXPORT_FILE
    write_gender_annotation(out, rows)
    return {"file": str(out), "rows": len(rows), **counts}
