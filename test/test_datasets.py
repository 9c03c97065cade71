"""Dataset adapters on small fixtures in each published layout, the split helpers, and the real data in ../shared."""

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA

from training.datasets import (
    DATASETS,
    GENDER_FEMALE,
    GENDER_MALE,
    GENDER_UNKNOWN,
    DatasetLayoutError,
    GenderAnnotation,
    Record,
    detect_dataset,
    kfold,
    leave_one_subject_out,
    load_records,
    official_split,
    random_split,
    read_gender_annotation,
    write_gender_annotation,
)

_, _JPEG = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))


def write_images(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(_JPEG.tobytes())


def by_name(records: list[Record]) -> dict[str, Record]:
    return {Path(record.path).name: record for record in records}


def problem_text(problems: list[tuple[str, str]]) -> str:
    return "\n".join(f"{where}: {reason}" for where, reason in problems)


# --- All-Age-Faces -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_folder", ["aglined faces", "aligned faces", "original images"])
def test_aaf_split_and_gender_from_lists_else_serial(tmp_path, image_folder):
    write_images(tmp_path / image_folder, "00000A02.jpg", "00001A05.jpg", "07380A30.jpg", "07381A22.jpg",
                 "13321A80.jpg", "holiday.jpg")
    (tmp_path / "image sets").mkdir()
    (tmp_path / "image sets" / "train.txt").write_text("00000A02.jpg 0\n07381A22.jpg 1\n\n")
    (tmp_path / "image sets" / "val.txt").write_text("00001A05.jpg 0\r\n13321A80.jpg 1\r\n99999A01.jpg 1\r\n")

    records, problems = load_records("aaf", tmp_path)

    found = by_name(records)
    assert sorted(found) == ["00000A02.jpg", "00001A05.jpg", "07380A30.jpg", "07381A22.jpg", "13321A80.jpg"]
    assert (found["00000A02.jpg"].split, found["00000A02.jpg"].gender, found["00000A02.jpg"].age) == ("train", 0, 2)
    assert (found["13321A80.jpg"].split, found["13321A80.jpg"].gender, found["13321A80.jpg"].age) == ("val", 1, 80)
    assert (found["07380A30.jpg"].split, found["07380A30.jpg"].gender) == ("", GENDER_FEMALE)  # unlisted: serial
    assert found["07381A22.jpg"].subject == "07381A22"
    assert all(Path(record.path).is_absolute() for record in records)
    assert len(problems) == 2
    assert "holiday.jpg" in problem_text(problems) and "99999A01.jpg" in problem_text(problems)


# --- UTKFace -----------------------------------------------------------------------------------------------------


def test_utkface_nested_converts_gender_and_tolerates_missing_fields(tmp_path):
    write_images(tmp_path / "crop_part1", "25_0_0_20170101000000001.jpg.chip.jpg",
                 "3_1_2_20170101000000002.jpg.chip.jpg", "61_3_20170109150557335.jpg.chip.jpg", "x_0_0_1.jpg")
    write_images(tmp_path / "UTKFace" / "part2", "40_1_0_20170101000000003.jpg")
    (tmp_path / "crop_part1" / "landmark_list.txt").write_text("not an image\n")

    records, problems = load_records("utkface", tmp_path)

    found = by_name(records)
    assert found["25_0_0_20170101000000001.jpg.chip.jpg"].gender == GENDER_MALE  # UTK 0 = male
    assert found["3_1_2_20170101000000002.jpg.chip.jpg"].gender == GENDER_FEMALE  # UTK 1 = female
    assert found["40_1_0_20170101000000003.jpg"].age == 40
    missing_field = found["61_3_20170109150557335.jpg.chip.jpg"]
    assert (missing_field.age, missing_field.gender) == (61, GENDER_UNKNOWN)
    assert missing_field.subject == "61_3_20170109150557335"
    assert [Path(where).name for where, _ in problems] == ["x_0_0_1.jpg"]


# --- MORPH-II ----------------------------------------------------------------------------------------------------


def test_morph2_parses_names_in_nested_folders(tmp_path):
    write_images(tmp_path / "Album2", "002537_01M22.JPG", "002537_02M23.JPG")
    write_images(tmp_path / "Album2" / "more", "104000_00F45.jpg", "readme.jpg")

    records, problems = load_records("morph2", tmp_path)

    found = by_name(records)
    assert (found["002537_01M22.JPG"].subject, found["002537_01M22.JPG"].gender, found["002537_01M22.JPG"].age) \
        == ("002537", GENDER_MALE, 22)
    assert (found["104000_00F45.jpg"].gender, found["104000_00F45.jpg"].age) == (GENDER_FEMALE, 45)
    assert found["002537_02M23.JPG"].subject == found["002537_01M22.JPG"].subject
    assert [Path(where).name for where, _ in problems] == ["readme.jpg"]


def test_morph2_release_csv_takes_precedence_over_names(tmp_path):
    write_images(tmp_path / "images", "002537_01M22.JPG", "003000_00F30.JPG", "not_in_csv.JPG")
    (tmp_path / "MORPH_Album2.csv").write_text(
        "ID_NUM, Picture_Num ,DOB,DOA,RACE,GENDER,FACIAL_HAIR,AGE,AGE_DIFF,GLASSES,PHOTO\n"
        "2537,1,1980-01-01,2002-06-01,B,M,0,23,0,0,Album2/002537_01M22.JPG\n"
        "3000,0,1970-01-01,2000-01-01,W,F,0,,0,0,Album2\\003000_00F30.JPG\n"
        "4000,0,1970-01-01,2000-01-01,W,F,0,31,0,0,Album2/004000_00F31.JPG\n"
    )

    records, problems = load_records("morph2", tmp_path)

    found = by_name(records)
    assert sorted(found) == ["002537_01M22.JPG", "003000_00F30.JPG"]
    assert (found["002537_01M22.JPG"].age, found["002537_01M22.JPG"].subject) == (23, "2537")  # from the CSV
    assert (found["003000_00F30.JPG"].age, found["003000_00F30.JPG"].gender) == (30, GENDER_FEMALE)  # empty: name
    assert len(problems) == 1 and "004000_00F31.JPG" in problems[0][1] and problems[0][0].endswith(":4")


# --- FG-NET ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_images_folder", [True, False])
def test_fgnet_suffixes_and_case(tmp_path, in_images_folder):
    folder = tmp_path / "images" if in_images_folder else tmp_path
    write_images(folder, "001A02.JPG", "001A43b.JPG", "001A43a.jpg", "002a10.JPG", "Thumbs.jpg")

    records, problems = load_records("fgnet", tmp_path)

    assert sorted((record.subject, record.age) for record in records) == [
        ("001", 2), ("001", 43), ("001", 43), ("002", 10)]
    assert {record.gender for record in records} == {GENDER_UNKNOWN}
    assert [Path(where).name for where, _ in problems] == ["Thumbs.jpg"]


# --- MegaAge-Asian -----------------------------------------------------------------------------------------------


def make_megaage(root: Path, list_folder: str = "list") -> None:
    write_images(root / "train", "1.jpg", "2.jpg", "3.jpg")
    write_images(root / "test", "1.jpg", "2.jpg")
    lists = root / list_folder
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train_name.txt").write_text("1.jpg\n2.jpg\n3.jpg\n4.jpg\n")
    (lists / "train_age.txt").write_text("23\n5\n70\n12\n\n")
    (lists / "test_name.txt").write_text("1.jpg\n2.jpg\n")
    (lists / "test_age.txt").write_text("0\n41\n")


@pytest.mark.parametrize("list_folder", ["list", "."])
def test_megaage_lists_splits_and_missing_images(tmp_path, list_folder):
    make_megaage(tmp_path, list_folder)

    records, problems = load_records("megaage_asian", tmp_path)

    assert sorted((record.split, Path(record.path).name, record.age) for record in records) == [
        ("test", "1.jpg", 0), ("test", "2.jpg", 41), ("train", "1.jpg", 23), ("train", "2.jpg", 5),
        ("train", "3.jpg", 70)]
    assert {record.gender for record in records} == {GENDER_UNKNOWN}
    assert len({record.subject for record in records}) == 5  # train/1.jpg and test/1.jpg are different people
    assert len(problems) == 1 and problems[0][0].endswith("4.jpg") and "train_name.txt:4" in problems[0][1]


def test_megaage_gender_from_default_and_explicit_annotation(tmp_path):
    make_megaage(tmp_path)
    write_gender_annotation(tmp_path / "list" / "gender_annotation.csv", [
        GenderAnnotation("train", "1.jpg", GENDER_MALE, 1.0, "classifiers-agree"),
        ("test", "2.jpg", "female", 0.75, "manual"),
        {"split": "train", "name": "2.jpg", "gender": GENDER_UNKNOWN, "confidence": None, "source": "manual"},
    ])
    elsewhere = tmp_path / "other.csv"
    write_gender_annotation(elsewhere, [("train", "3.jpg", GENDER_FEMALE)])

    default_records, _ = load_records("megaage_asian", tmp_path)
    explicit_records, _ = load_records("megaage_asian", tmp_path, gender_file=elsewhere)

    genders = {(record.split, Path(record.path).name): record.gender for record in default_records}
    assert genders == {("train", "1.jpg"): GENDER_MALE, ("train", "2.jpg"): GENDER_UNKNOWN,
                       ("train", "3.jpg"): GENDER_UNKNOWN, ("test", "1.jpg"): GENDER_UNKNOWN,
                       ("test", "2.jpg"): GENDER_FEMALE}
    assert [Path(record.path).name for record in explicit_records if record.gender != GENDER_UNKNOWN] == ["3.jpg"]


def test_gender_annotation_round_trip_and_later_rows_win(tmp_path):
    path = tmp_path / "gender_annotation.csv"
    write_gender_annotation(path, [("train", "7.jpg", GENDER_FEMALE, 0.5, "manual"),
                                   ("train", "7.jpg", "Male", 1, "manual"), ("test", "8.jpg", "unknown")])

    assert path.read_text().splitlines()[0] == "split,name,gender,confidence,source"
    assert read_gender_annotation(path) == {("train", "7.jpg"): GENDER_MALE, ("test", "8.jpg"): GENDER_UNKNOWN}
    assert not list(tmp_path.glob("*.partial"))


def test_gender_annotation_rejects_unknown_words(tmp_path):
    path = tmp_path / "gender_annotation.csv"
    path.write_text("split,name,gender,confidence,source\ntrain,1.jpg,woman,1,manual\n")
    with pytest.raises(ValueError, match=":2: gender 'woman'"):
        read_gender_annotation(path)
    with pytest.raises(ValueError, match="not male, female or unknown"):
        write_gender_annotation(path, [("train", "1.jpg", "woman")])


def test_megaage_mismatched_list_lengths_name_both_files(tmp_path):
    make_megaage(tmp_path)
    (tmp_path / "list" / "test_age.txt").write_text("0\n41\n9\n")

    with pytest.raises(DatasetLayoutError) as raised:
        load_records("megaage_asian", tmp_path)

    message = str(raised.value)
    assert "test_name.txt has 2 lines" in message and "test_age.txt has 3" in message


# --- wrong layouts, registry, detection --------------------------------------------------------------------------

EXPECTED_LAYOUT_NAMES = {"morph2": "MORPH-II", "fgnet": "FG-NET", "megaage_asian": "MegaAge-Asian",
                         "aaf": "All-Age-Faces", "utkface": "UTKFace", "celeba_gender": "CelebA", "fairface": "FairFace"}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_wrong_layout_names_expected_layout_and_what_was_found(tmp_path, name):
    (tmp_path / "notes.txt").write_text("hello\n")
    write_images(tmp_path / "photos", "holiday.jpg")

    with pytest.raises(DatasetLayoutError) as raised:
        load_records(name, tmp_path)

    message = str(raised.value)
    assert EXPECTED_LAYOUT_NAMES[name] in message
    assert "notes.txt" in message and "photos/" in message


def test_missing_root_is_a_layout_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no such folder"):
        load_records("utkface", tmp_path / "absent")


def test_unknown_dataset_and_misplaced_gender_file(tmp_path):
    with pytest.raises(ValueError, match="known: morph2, fgnet, megaage_asian, aaf, utkface"):
        load_records("imdb", tmp_path)
    with pytest.raises(ValueError, match="only applies to megaage_asian"):
        load_records("utkface", tmp_path, gender_file=tmp_path / "g.csv")


def test_detect_dataset(tmp_path):
    write_images(tmp_path / "utk", "25_0_0_20170101000000001.jpg.chip.jpg", "26_1_0_20170101000000002.jpg")
    write_images(tmp_path / "morph", "002537_01M22.JPG", "002537_02M23.JPG", "readme.jpg")
    write_images(tmp_path / "fgnet" / "images", "001A02.JPG", "001A43b.JPG")
    write_images(tmp_path / "aaf" / "aglined faces", "00000A02.jpg")
    make_megaage(tmp_path / "megaage")
    write_images(tmp_path / "unrelated", "holiday.jpg")

    detected = {folder: detect_dataset(tmp_path / folder) for folder in ("utk", "morph", "fgnet", "aaf", "megaage")}

    assert detected == {"utk": "utkface", "morph": "morph2", "fgnet": "fgnet", "aaf": "aaf",
                        "megaage": "megaage_asian"}
    with pytest.raises(DatasetLayoutError, match="holiday.jpg"):
        detect_dataset(tmp_path / "unrelated")


# --- split helpers -----------------------------------------------------------------------------------------------


def synthetic_records(subject_sizes: list[int]) -> list[Record]:
    return [Record(f"/data/s{subject}_{image}.jpg", 20.0 + subject, subject % 2, f"s{subject:03d}")
            for subject, size in enumerate(subject_sizes) for image in range(size)]


def test_kfold_image_level_sizes_disjointness_and_seed():
    records = synthetic_records([1] * 103)

    folds = kfold(records, k=5, seed=0)

    assert sorted(len(test) for _, test in folds) == [20, 20, 21, 21, 21]
    all_test = [index for _, test in folds for index in test]
    assert sorted(all_test) == list(range(103))  # every image tested exactly once
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == 103
    assert kfold(records, k=5, seed=0) == folds
    assert kfold(records, k=5, seed=1) != folds


def test_kfold_by_subject_is_subject_exclusive_and_balanced():
    sizes = [1 + (subject * 7) % 5 for subject in range(60)]
    records = synthetic_records(sizes)

    folds = kfold(records, k=5, seed=3, by_subject=True)

    for train, test in folds:
        assert not {records[i].subject for i in train} & {records[i].subject for i in test}
    fold_sizes = [len(test) for _, test in folds]
    assert sum(fold_sizes) == len(records) and max(fold_sizes) - min(fold_sizes) <= max(sizes)
    assert kfold(records, k=5, seed=3, by_subject=True) == folds
    with pytest.raises(ValueError, match="at least 61 subjects"):
        kfold(records, k=61, by_subject=True)


def test_kfold_without_subject_ids_falls_back_to_images():
    records = [Record(f"/data/{index}.jpg", 30.0, GENDER_MALE, "") for index in range(10)]

    assert sorted(len(test) for _, test in kfold(records, k=5, by_subject=True)) == [2] * 5


def test_leave_one_subject_out():
    records = synthetic_records([3, 1, 2, 4])

    folds = leave_one_subject_out(records)

    assert [subject for subject, _, _ in folds] == ["s000", "s001", "s002", "s003"]
    for subject, train, test in folds:
        assert {records[i].subject for i in test} == {subject}
        assert subject not in {records[i].subject for i in train}
        assert len(train) + len(test) == len(records)


def test_official_and_random_split():
    records = [Record(f"/d/{i}.jpg", 30.0, GENDER_MALE, str(i), split) for i, split in
               enumerate(["train", "val", "test", "train", ""])]
    assert official_split(records) == ([0, 3], [1, 2])
    assert official_split(records, test="test") == ([0, 3], [2])
    with pytest.raises(ValueError, match="no official"):
        official_split(records, train="trainval")

    many = synthetic_records([1] * 50)
    train, test = random_split(many, test_fraction=0.2, seed=7)
    assert len(test) == 10 and sorted(train + test) == list(range(50))
    assert random_split(many, test_fraction=0.2, seed=7) == (train, test)
    assert random_split(many, test_fraction=0.2, seed=8) != (train, test)


def test_random_split_by_subject_keeps_each_subject_on_one_side():
    # UTKFace: two crops of one photo (crop_part1 and the aligned set) share a subject and must never be split.
    records = synthetic_records([2, 1, 3, 2, 1] * 20)
    train, test = random_split(records, test_fraction=0.2, seed=3, by_subject=True)
    assert sorted(train + test) == list(range(len(records)))
    assert not {records[i].subject for i in train} & {records[i].subject for i in test}
    assert abs(len(test) - 0.2 * len(records)) <= 3
    assert random_split(records, test_fraction=0.2, seed=3, by_subject=True) == (train, test)


# --- the real data in ../shared/data -----------------------------------------------------------------------------


def shared_dataset(relative: str) -> Path:
    root = SHARED_DATA / relative
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} is absent (it lives in the workplace's ../shared)")
    return root


def test_real_aaf_official_split_and_serial_genders():
    records, problems = load_records("aaf", shared_dataset("aaf"))

    assert problems == []
    assert len(records) == 13_322
    assert Counter(record.split for record in records) == {"train": 6_637, "val": 6_685}
    for record in records:
        serial = int(Path(record.path).stem[:5])
        assert record.gender == (GENDER_FEMALE if serial <= 7380 else GENDER_MALE)


def test_real_utkface_crop_part1():
    records, problems = load_records("utkface", shared_dataset("utkface"))

    assert problems == []
    assert abs(len(records) - 7_812) <= 10
    assert (min(record.age for record in records), max(record.age for record in records)) == (1, 110)
    genders = Counter(record.gender for record in records)
    assert genders[GENDER_MALE] > 1000 and genders[GENDER_FEMALE] > 1000
    assert detect_dataset(shared_dataset("utkface") / "crop_part1") == "utkface"


def test_real_fgnet_records_and_leave_one_person_out():
    records, problems = load_records("fgnet", shared_dataset("fgnet"))

    assert problems == []
    assert len(records) == 1_002
    assert len({record.subject for record in records}) == 82
    assert (min(record.age for record in records), max(record.age for record in records)) == (0, 69)
    assert {record.gender for record in records} == {GENDER_UNKNOWN}  # FG-NET has no gender labels
    folds = leave_one_subject_out(records)
    assert len(folds) == 82
    tested = Counter(index for _, _, test in folds for index in test)
    assert sorted(tested) == list(range(1_002)) and set(tested.values()) == {1}  # each photo tested exactly once
    for subject, train, test in folds:
        assert {records[i].subject for i in test} == {subject}
        assert subject not in {records[i].subject for i in train}


def test_real_utkface_aligned_subject_split_keeps_photos_together():
    records, problems = load_records("utkface", shared_dataset("utkface_aligned"))
    assert abs(len(records) - 18_853) <= 10 and len(problems) <= 10
    train, test = random_split(records, test_fraction=0.2, seed=0, by_subject=True)
    assert abs(len(test) / len(records) - 0.2) < 0.01
    assert not {records[i].subject for i in train} & {records[i].subject for i in test}
