"""`agegender report`: a markdown table in the shape of the paper's tables, and PNG plots, from run folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import cumulative_accuracy, gender_confusion, mae_by_decade

# The paper's numbers, quoted beside ours (Tables 1-5).
PAPER_ROWS = {
    "morph2": [("CMT", "5M", 2.91, 99.2, "5-fold"), ("Compact CNN", "56.9M", 3.23, 98.8, "2-fold"),
               ("SSR-Net", "40.9K", 3.16, None, "5-fold"), ("Paper (ours in the paper)", "99.2K", 2.88, 99.34,
                                                             "5-fold")],
    "fgnet": [("CMT", "5M", 3.43, None, "LOPO"), ("DEX (IMDB-WIKI pretraining)", "138M", 4.63, None, "LOPO"),
              ("MV (IMDB-WIKI pretraining)", "138M", 4.10, None, "LOPO"), ("Paper", "99.2K", 3.41, None, "LOPO")],
    "megaage_asian": [("MobileNet-V1", "226.3K", 0.440, 0.606), ("DenseNet", "242K", 0.517, 0.694),
                      ("SSR-Net", "40.9K", 0.549, 0.741), ("Paper", "99.2K", 0.585, 0.788)],
}


def _load_run(run: Path) -> dict:
    """One row: from protocol.json (all folds) or metrics.json (one training run)."""
    if (run / "protocol.json").is_file():
        report = json.loads((run / "protocol.json").read_text())
        mean = report["mean"]
        init = report.get("init_weights")
        return {"run": run.name, "dataset": report["dataset"], "protocol": report["protocol"],
                "model": report["model"], "mae": mean.get("mae_pooled") or mean.get("mae"),
                "gender_acc": mean.get("gender_acc"), "ca3": mean.get("ca3"), "ca5": mean.get("ca5"),
                "n": mean.get("n"), "folds": mean.get("folds"), "params": report.get("params"),
                "start": f"fine-tuned from {Path(init).parent.name}/{Path(init).name}" if init else "scratch",
                "wall_s": report.get("wall_s"), "predictions": sorted(run.glob("*/predictions.npz"))}
    if (run / "metrics.json").is_file():
        result = json.loads((run / "metrics.json").read_text())
        metrics = result["metrics"]
        card = json.loads((run / "model.json").read_text()) if (run / "model.json").is_file() else {}
        return {"run": run.name, "dataset": card.get("training_data", ""), "protocol": "single split",
                "model": result["config"]["model"], "mae": metrics.get("mae"), "gender_acc": metrics.get("gender_acc"),
                "ca3": metrics.get("ca3"), "ca5": metrics.get("ca5"), "n": metrics.get("n"), "folds": 1,
                "params": card.get("params"), "start": "fine-tuned" if result["config"].get("init_weights")
                else "scratch", "wall_s": None, "predictions": [run / "predictions.npz"]}
    raise FileNotFoundError(f"{run}: neither protocol.json nor metrics.json (is it a run folder?)")


def _fmt(value, pattern="{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _load_predictions(paths: list[Path]) -> dict[str, np.ndarray]:
    parts = [np.load(p) for p in paths if p.is_file()]
    if not parts:
        return {}
    return {key: np.concatenate([p[key] for p in parts]) for key in ("age_true", "age_pred", "gender_true", "p_male")}


def write_report(runs: list[Path], out: Path | None = None) -> str:
    rows = [_load_run(r) for r in runs]
    lines = ["| Run | Model | Params | Data / protocol | Start | Test faces | MAE | Gender acc (%) | CA(3) | CA(5) "
             "| Wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    from agegender_ros.model import count_parameters, create_model

    for row in rows:
        params = row.get("params") or count_parameters(create_model(row["model"]))
        accuracy = None if row["gender_acc"] is None else 100 * row["gender_acc"]
        wall = "-" if not row.get("wall_s") else f"{row['wall_s'] / 60:.0f} min"
        lines.append(f"| {row['run']} | {row['model']} | {params / 1000:.1f}K | {row['dataset']} {row['protocol']} | "
                     f"{row['start']} | {row['n']} | {_fmt(row['mae'], '{:.2f}')} | {_fmt(accuracy, '{:.2f}')} | "
                     f"{_fmt(row['ca3'])} | {_fmt(row['ca5'])} | {wall} |")
    # Each run's predictions, read once for the per-decade table and the plots.
    loaded = [(row["run"], _load_predictions(row["predictions"])) for row in rows]
    loaded = [(name, p) for name, p in loaded if p]
    lines += _decade_table(loaded)
    datasets = {row["dataset"] for row in rows}
    for dataset, paper_rows in PAPER_ROWS.items():
        if dataset in datasets:
            lines += ["", f"Paper's numbers for {dataset} (quoted, not measured here):", ""]
            lines += [f"- {' / '.join(str(v) for v in r if v is not None)}" for r in paper_rows]
    markdown = "\n".join(lines) + "\n"
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(markdown)
        _plots(loaded, out)
    return markdown


def _decade_table(loaded: list[tuple[str, dict]]) -> list[str]:
    """MAE per decade of true age, one column per run (pooled over all of a protocol's test faces)."""
    per_run = [(name, mae_by_decade(p["age_true"], p["age_pred"])) for name, p in loaded]
    if not per_run:
        return []
    # mae_by_decade's keys are "0-9", "10-19", ...: order them by their first year.
    decades = sorted({d for _, table in per_run for d in table}, key=lambda key: int(key.split("-")[0]))
    lines = ["", "MAE by decade of true age (faces):", "",
             "| Ages | " + " | ".join(name for name, _ in per_run) + " |", "|---|" + "---|" * len(per_run)]
    for d in decades:
        cells = [f"{t[d]['mae']:.2f} ({t[d]['n']})" if d in t else "-" for _, t in per_run]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def _plots(loaded: list[tuple[str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not loaded:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    years = np.arange(0, 11)
    for name, p in loaded:
        axis.plot(years, [cumulative_accuracy(p["age_true"], p["age_pred"], n) for n in years], marker="o", label=name)
    axis.set(xlabel="n (years)", ylabel="CA(n)", title="Cumulative accuracy", ylim=(0, 1))
    axis.grid(alpha=0.3), axis.legend()
    figure.tight_layout(), figure.savefig(out / "ca_curve.png", dpi=120), plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, p in loaded:
        decades = (p["age_true"] // 10).astype(int)
        ds = np.unique(decades)
        axis.plot(ds * 10 + 5, [np.abs(p["age_pred"] - p["age_true"])[decades == d].mean() for d in ds], marker="o",
                  label=name)
    axis.set(xlabel="true age (decade centre)", ylabel="MAE (years)", title="MAE by age")
    axis.grid(alpha=0.3), axis.legend()
    figure.tight_layout(), figure.savefig(out / "mae_by_age.png", dpi=120), plt.close(figure)

    loaded = [(name, p) for name, p in loaded if (p["gender_true"] >= 0).any()]  # FG-NET has no gender labels
    if not loaded:
        return
    figure, axes = plt.subplots(1, len(loaded), figsize=(3.2 * len(loaded), 3), squeeze=False)
    for axis, (name, p) in zip(axes[0], loaded):
        confusion = np.array(gender_confusion(p["gender_true"], p["p_male"]))
        axis.imshow(confusion, cmap="Blues")
        for (i, j), count in np.ndenumerate(confusion):
            axis.text(j, i, str(count), ha="center", va="center")
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["female", "male"], yticklabels=["female", "male"],
                 xlabel="predicted", ylabel="true", title=name)
    figure.tight_layout(), figure.savefig(out / "gender_confusion.png", dpi=120), plt.close(figure)
