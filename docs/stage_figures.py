"""One row of fairface.md's stage tables per run folder or model card: held-out AAF val and UTKFace fifth (MAE /
gender), FG-NET (MAE), FairFace dev (gender, its lowest race group's gender, age group, one-off group, years outside
the group; all faces, a missed face counted wrong).

    .venv/bin/python docs/stage_figures.py runs/default-stage4 ... runs/default/model.json

Reads what `agegender train` wrote (metrics.json) or what `agegender soup` wrote into a card; scores nothing anew.
"""
import json
import sys
from pathlib import Path


def row(source: str) -> str:
    path = Path(source)
    figures = json.loads((path / "metrics.json" if path.is_dir() else path).read_text())
    held_out = figures.get("per_dataset") or figures["metrics_per_dataset"]
    unseen = figures.get("unseen") or figures["metrics_unseen"]
    aaf, utk = held_out["aaf:official:official"], held_out["utkface:random80:random80"]
    fairface = held_out["fairface:dev10:dev10"]
    every, races = fairface["groups"]["all"], fairface["groups"]["by_race"]
    lowest = min(races, key=lambda race: races[race]["gender_acc"])
    cells = [source, f"{aaf['mae']:.3f} / {aaf['gender_acc']:.2%}", f"{utk['mae']:.3f} / {utk['gender_acc']:.2%}",
             f"{unseen['fgnet']['mae']:.3f}", f"{every['gender_acc']:.2%}",
             f"{races[lowest]['gender_acc']:.1%} ({lowest})", f"{every['age_group_acc']:.2%}",
             f"{fairface['age_group_one_off']:.1%}", f"{fairface['years_outside']:.2f}"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for source in sys.argv[1:]:
        print(row(source))
