"""training/annotate_gender: consensus rule, classifiers (timm without torchvision, our nets), exact resume, the four
commands on a small MegaAge-Asian-layout fixture made of AAF faces, the review server, and the review page in a
real browser (Debian's chromium driven by Playwright)."""
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import shared
from training.annotate_gender import classifiers, consensus, review
from training.datasets import GENDER_FEMALE, GENDER_MALE, GENDER_UNKNOWN, load_records

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def agegender(*args):
    """`agegender ARGS` in this process (no new interpreter to start): (exit code, stdout, stderr)."""
    from agegender_ros.cli import main

    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)  # --threads must not leak into the other tests
    return code, out.getvalue(), err.getvalue()


def _timm_ok() -> bool:
    try:
        from training.annotate_gender.timm_import import import_timm

        import_timm()
        return True
    except ImportError:
        return False


# A tiny set: two of our nets and, where timm imports, a quarter-width ResNet-50 from timm.
TINY_SET = "paper,ssrnet," + ("resnet50_quarter" if _timm_ok() else "mobilenet_v1")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """AAF faces in two layouts: a 40-face AAF root (30 train / 10 val) for training, and 40 other faces in
    MegaAge-Asian's layout (train/N.jpg, test/N.jpg, list/{train,test}_{name,age}.txt) with their true genders."""
    aaf = shared("aaf")
    lines = (aaf / "image sets" / "train.txt").read_text().split("\n")
    women = [line for line in lines if line.endswith(" 0")][::40][:40]
    men = [line for line in lines if line.endswith(" 1")][::40][:40]
    base = tmp_path_factory.mktemp("annotate")
    mini = base / "aaf"
    (mini / "aglined faces").mkdir(parents=True)
    (mini / "image sets").mkdir()
    for line in women[:20] + men[:20]:
        shutil.copy(aaf / "aglined faces" / line.split()[0], mini / "aglined faces")
    (mini / "image sets" / "train.txt").write_text("\n".join(women[:15] + men[:15]) + "\n")
    (mini / "image sets" / "val.txt").write_text("\n".join(women[15:20] + men[15:20]) + "\n")

    mega = base / "megaage"
    truth = {}
    rest = women[20:40] + men[20:40]
    for split, chunk in (("train", rest[0::4] + rest[1::4] + rest[2::4]), ("test", rest[3::4])):
        (mega / split).mkdir(parents=True)
        (mega / "list").mkdir(exist_ok=True)
        names, ages = [], []
        for i, line in enumerate(chunk, 1):
            file_name, gender = line.split()
            shutil.copy(aaf / "aglined faces" / file_name, mega / split / f"{i}.jpg")
            names.append(f"{i}.jpg")
            ages.append(str(int(file_name[6:8])))
            truth[(split, f"{i}.jpg")] = int(gender)
        (mega / "list" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        (mega / "list" / f"{split}_age.txt").write_text("\n".join(ages) + "\n")
    return mini, mega, truth


@pytest.fixture(scope="module")
def trained(roots, tmp_path_factory):
    """A work folder with the tiny set trained for one epoch on the mini AAF root."""
    mini, _, _ = roots
    workdir = tmp_path_factory.mktemp("work")
    code, out, err = agegender("annotate-gender", "train", "--root", mini, "--workdir", workdir, "--models", TINY_SET,
                               "--epochs", "1", "--batch-size", "8", "--threads", "1", "--no-progress")
    assert code == 0, err
    return workdir, json.loads(out.strip().splitlines()[-1])


# --- consensus rule ---------------------------------------------------------------------------------------------


def test_consensus_keeps_unanimous_votes_with_their_mean_probability():
    p = np.array([[0.9, 0.8, 0.7, 0.6],  # all male
                  [0.1, 0.2, 0.3, 0.4],  # all female
                  [0.9, 0.9, 0.9, 0.4],  # one dissent
                  [0.5, 0.5, 0.5, 0.5]])  # exactly 0.5 votes male
    result = consensus.consensus(p)
    assert result.agreed.tolist() == [True, True, False, True]
    assert result.label[:2].tolist() == [GENDER_MALE, GENDER_FEMALE]
    assert result.confidence[:2] == pytest.approx([0.75, 0.75])
    report = consensus.agreement_report(["a", "b", "c", "d"], p, np.array([1, 1, 1, -1]))
    # The unknown-truth row is left out; of the 3 known, 2 agree and 1 of those is right.
    assert report["n"] == 3 and report["agreed_n"] == 2 and report["agreement_rate"] == pytest.approx(2 / 3)
    assert report["consensus_acc_on_agreed"] == pytest.approx(0.5)
    assert report["per_model_acc"]["d"] == pytest.approx(1 / 3)


def test_answer_log_is_append_only_and_survives_a_torn_line(tmp_path):
    log = consensus.AnswerLog(tmp_path / "answers.jsonl")
    item = {"id": "train/1.jpg", "split": "train", "name": "1.jpg"}
    log.append(item, "male")
    with (tmp_path / "answers.jsonl").open("ab") as file:
        file.write(b'{"id": "train/2.jpg", "ans')  # a crash mid-write
    log.append({"id": "train/3.jpg", "split": "train", "name": "3.jpg"}, "skip")
    log.append(item, "female")  # a corrected answer: the last one wins
    assert log.read() == {"train/1.jpg": "female", "train/3.jpg": "skip"}
    with pytest.raises(ValueError):
        log.append(item, "maybe")


# --- classifiers ------------------------------------------------------------------------------------------------


def test_paper_four_and_default_set_build_from_timm_without_torchvision():
    pytest.importorskip("timm", reason="timm not installed (pip install --no-deps timm)")
    had_torchvision = "torchvision" in sys.modules
    x = torch.randn(2, 3, 64, 64)
    sizes, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: threads only contend
    try:
        for name in (*classifiers.PAPER_SET, *classifiers.DEFAULT_SET):
            model = classifiers.build(name).eval()
            with torch.no_grad():
                assert model(x).shape == (2,), name
            sizes[name] = model.input_size
    finally:
        torch.set_num_threads(threads)
    assert sizes["inception_v3"] == 75  # timm's InceptionV3 cannot run at 64 px: upsampled to its minimum
    assert all(sizes[name] == 64 for name in classifiers.DEFAULT_SET)
    assert classifiers.resolve("xception") == ("timm", "legacy_xception", {})
    assert classifiers.resolve("densenet")[0] == "ours" and classifiers.resolve("timm:densenet121")[0] == "timm"
    if not had_torchvision:
        assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)
    with pytest.raises(ValueError, match="unknown classifier"):
        classifiers.build("no_such_net")


def test_training_resumes_exactly_after_a_crash(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (24, 80, 80, 3), dtype=np.uint8)
    genders = np.array([0, 1] * 12, np.int8)
    config = classifiers.ClassifierConfig(name="paper", epochs=2, batch_size=8, threads=1)
    full = classifiers.train_classifier(config, crops, genders, crops[:6], genders[:6], tmp_path / "full",
                                        progress=False)

    real_save, saves = classifiers.save_checkpoint, []

    def crash_after_first_epoch(path, state):
        real_save(path, state)
        saves.append(path)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(classifiers, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        classifiers.train_classifier(config, crops, genders, crops[:6], genders[:6], tmp_path / "crashed",
                                     progress=False)
    monkeypatch.setattr(classifiers, "save_checkpoint", real_save)
    assert not (tmp_path / "crashed" / "model.pt").exists()
    resumed = classifiers.train_classifier(config, crops, genders, crops[:6], genders[:6], tmp_path / "crashed",
                                           resume=True, progress=False)
    assert len(resumed["history"]) == 2
    assert resumed["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], rel=1e-5)
    a = np.load(tmp_path / "full" / "val_predictions.npz")["p_male"]
    b = np.load(tmp_path / "crashed" / "val_predictions.npz")["p_male"]
    assert b == pytest.approx(a, abs=1e-5)
    other = classifiers.ClassifierConfig(name="paper", epochs=3, batch_size=8, threads=1)
    with pytest.raises(ValueError, match="epochs"):
        classifiers.train_classifier(other, crops, genders, crops[:6], genders[:6], tmp_path / "crashed",
                                     resume=True, progress=False)
    # Another 80/20 split means other training faces: refused too. A checkpoint from before split_seed was kept
    # drew its split with the training seed.
    resplit = classifiers.ClassifierConfig(name="paper", epochs=2, batch_size=8, threads=1, split_seed=1)
    with pytest.raises(ValueError, match="split_seed"):
        classifiers.train_classifier(resplit, crops, genders, crops[:6], genders[:6], tmp_path / "crashed",
                                     resume=True, progress=False)
    assert classifiers.stored_key({"key": {"seed": 3}})["split_seed"] == 3


def test_split_seed_alone_draws_the_fallback_split():
    """A dataset without an official split is split 80/20 by --split-seed; --seed does not move it."""
    from types import SimpleNamespace

    from training.annotate_gender import _split

    data = SimpleNamespace(paths=np.array([f"{i:03d}.jpg" for i in range(50)]), splits=np.array([""] * 50))
    first, again, other = _split(data, 0), _split(data, 0), _split(data, 1)
    assert len(first[1]) == 10 and not set(first[0]) & set(first[1])
    assert np.array_equal(first[1], again[1]) and not np.array_equal(first[1], other[1])
    official = SimpleNamespace(paths=data.paths, splits=np.array(["train"] * 40 + ["val"] * 10))
    assert np.array_equal(_split(official, 1)[1], np.arange(40, 50))


# --- the commands -----------------------------------------------------------------------------------------------


def test_train_label_export_on_a_megaage_layout_fixture(roots, trained, tmp_path):
    _, mega, truth = roots
    workdir, report = trained
    names = TINY_SET.split(",")
    assert set(report["per_model_acc"]) == set(names) and report["n"] == 10
    assert 0 <= report["agreement_rate"] <= 1
    for name in names:
        assert (classifiers.classifier_dir(workdir, name) / "model.pt").is_file()
    assert json.loads((workdir / "classifiers.json").read_text())["classifiers"] == names

    # --resume keeps finished classifiers.
    code, _, err = agegender("annotate-gender", "train", "--root", roots[0], "--workdir", workdir, "--models",
                             TINY_SET, "--epochs", "1", "--batch-size", "8", "--threads", "1", "--no-progress",
                             "--resume")
    assert code == 0, err
    assert err.count("already trained") == len(names)

    code, out, err = agegender("annotate-gender", "label", "--root", mega, "--workdir", workdir, "--no-progress",
                               "--threads", "1")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["images"] == 40 and summary["kept"] + summary["queued"] == 40
    with (workdir / "labels.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {(r["split"], r["name"]) for r in rows} == set(truth)
    for row in rows:  # a kept label is the unanimous vote
        votes = {float(row[f"p_male:{n}"]) >= 0.5 for n in names}
        assert (len(votes) == 1) == (row["agreed"] == "1")
        if row["agreed"] == "1":
            assert row["label"] == ("male" if votes == {True} else "female")
    queue = json.loads((workdir / "queue.json").read_text())
    assert len(queue["items"]) == summary["queued"]
    assert all(set(item["votes"]) == set(names) for item in queue["items"])
    # Each queued face carries the detected box (image pixels) the review page outlines.
    for item in queue["items"]:
        height, width = cv2.imread(item["path"]).shape[:2]
        assert isinstance(item["detected"], bool) and (item["box"] is None) == (not item["detected"])
        if item["box"] is not None:
            x1, y1, x2, y2 = item["box"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (item, width, height)
    assert not queue["items"] or any(item["box"] for item in queue["items"])

    out = tmp_path / "gender_annotation.csv"
    code, stdout, err = agegender("annotate-gender", "export", "--workdir", workdir, "--out", out)
    assert code == 0, err
    assert "--gender-file" in err and "not reviewed yet" in err
    counts = json.loads(stdout)
    assert counts["rows"] == 40 and counts["classifiers-agree"] == summary["kept"]
    assert counts["unreviewed"] == summary["queued"]
    records, problems = load_records("megaage_asian", mega, gender_file=out)
    assert not problems and len(records) == 40
    by_key = {(r.split, Path(r.path).name): r.gender for r in records}
    for row in rows:
        expected = {"male": GENDER_MALE, "female": GENDER_FEMALE}[row["label"]] if row["queued"] == "0" \
            else GENDER_UNKNOWN
        assert by_key[(row["split"], row["name"])] == expected


def test_command_errors_are_one_line(tmp_path, roots):
    code, _, err = agegender("annotate-gender", "review", "--workdir", tmp_path, "--host", "0.0.0.0")
    assert code == 2 and "loopback" in err
    code, _, err = agegender("annotate-gender", "label", "--root", roots[1], "--workdir", tmp_path)
    assert code == 2 and "no trained classifiers" in err
    code, _, err = agegender("annotate-gender", "train", "--root", roots[0], "--workdir", tmp_path, "--models", "nope")
    assert code == 2 and "unknown classifier" in err
    code, _, err = agegender("annotate-gender", "export", "--workdir", tmp_path)
    assert code == 2 and "annotate-gender label" in err


# --- the review server ------------------------------------------------------------------------------------------


@pytest.fixture
def queued_workdir(roots, tmp_path):
    """A work folder whose queue holds 6 of the fixture's faces (synthetic votes: no training needed)."""
    _, mega, _ = roots
    images = sorted((mega / "train").glob("*.jpg"), key=lambda p: int(p.stem))[:8]
    p = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3], [0.6, 0.4, 0.9], [0.95, 0.9, 0.85],
                  [0.3, 0.6, 0.2], [0.1, 0.05, 0.2], [0.7, 0.3, 0.6], [0.45, 0.55, 0.5]])
    summary = consensus.write_labels(tmp_path, ["a", "b", "c"], ["train"] * 8, [i.name for i in images],
                                     [str(i) for i in images], p, root=str(mega))
    assert summary["queued"] == 6 and summary["kept"] == 2
    return tmp_path


def _request(url, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_review_server_is_loopback_only_and_validates_answers(queued_workdir):
    for host in ("0.0.0.0", "192.168.1.10", "example.org", "::"):
        with pytest.raises(ValueError, match="loopback"):
            review.make_server(queued_workdir, host, 0)
    server = review.make_server(queued_workdir, "localhost", 0)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = review.url_of(server)
        assert url.startswith("http://127.0.0.1:")
        status, body = _request(url + "api/state")
        assert status == 200 and json.loads(body)["total"] == 6 and json.loads(body)["next"] == 0
        status, body = _request(url + "image/0")
        assert status == 200 and body[:2] == b"\xff\xd8"
        assert _request(url + "image/99")[0] == 404
        status, _ = _request(url + "api/state", headers={"Host": "attacker.example:80"})
        assert status == 403  # DNS rebinding guard
        answer = json.dumps({"index": 0, "answer": "male"}).encode()
        assert _request(url + "api/answer", answer, {"Content-Type": "text/plain"})[0] == 415
        bad = json.dumps({"index": 0, "answer": "maybe"}).encode()
        assert _request(url + "api/answer", bad, {"Content-Type": "application/json"})[0] == 400
        status, body = _request(url + "api/answer", answer, {"Content-Type": "application/json"})
        assert status == 200 and json.loads(body)["next"] == 1 and json.loads(body)["answered"] == 1
        assert consensus.AnswerLog(queued_workdir / "answers.jsonl").read() == {"train/1.jpg": "male"}
    finally:
        server.shutdown()
        server.server_close()


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_review_page_in_a_real_browser_saves_every_answer_and_resumes(queued_workdir, tmp_path):
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium found (.ci/run installs Debian's chromium; or set $CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    server = subprocess.Popen([sys.executable, "-m", "agegender_ros.cli", "annotate-gender", "review", "--workdir",
                               queued_workdir, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        line = server.stdout.readline()
        assert "review page: http://127.0.0.1:" in line, line + server.stderr.read()
        url = line.split("review page: ", 1)[1].split()[0]
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            progress = page.locator("#progress")
            sync_api.expect(progress).to_have_text("0 of 6 answered")
            sync_api.expect(page.locator("#where")).to_contain_text("face 1 of 6")
            assert page.locator("#votes tbody tr").count() == 3
            page.wait_for_function("document.getElementById('image').naturalWidth > 0")
            page.keyboard.press("m")
            sync_api.expect(progress).to_have_text("1 of 6 answered")
            page.keyboard.press("f")
            sync_api.expect(progress).to_have_text("2 of 6 answered")
            page.click("#skip")
            sync_api.expect(progress).to_have_text("3 of 6 answered")
            sync_api.expect(page.locator("#where")).to_contain_text("face 4 of 6")
            # Every answer is on disk before the page moves on.
            assert len((queued_workdir / "answers.jsonl").read_text().splitlines()) == 3
            page.reload()  # resumes at the first unanswered face
            sync_api.expect(progress).to_have_text("3 of 6 answered")
            sync_api.expect(page.locator("#where")).to_contain_text("face 4 of 6")
            page.keyboard.press("b")
            sync_api.expect(page.locator("#previous")).to_contain_text("answered: skip")
            browser.close()  # a closed tab
        server.send_signal(signal.SIGKILL)  # and a crashed server: nothing acknowledged is lost
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    queue = json.loads((queued_workdir / "queue.json").read_text())["items"]
    lines = [json.loads(line) for line in (queued_workdir / "answers.jsonl").read_text().splitlines()]
    assert [(entry["id"], entry["answer"]) for entry in lines] == [
        (queue[0]["id"], "male"), (queue[1]["id"], "female"), (queue[2]["id"], "skip")]
    counts = consensus.export(queued_workdir, tmp_path / "out.csv")
    assert counts == {"file": str(tmp_path / "out.csv"), "rows": 8, "classifiers-agree": 2, "manual": 2,
                      "manual-skip": 1, "unreviewed": 3}
    with (tmp_path / "out.csv").open() as file:
        exported = {row["name"]: (row["gender"], row["source"]) for row in csv.DictReader(file)}
    assert exported[queue[0]["name"]] == ("male", "manual")
    assert exported[queue[1]["name"]] == ("female", "manual")
    assert exported[queue[2]["name"]] == ("unknown", "manual-skip")
