"""Typed records: sweep keys, scorings, result rows and training positions round-trip through
the plain data they are saved as (progress files, results JSON, checkpoints), in the layout
older files have."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cnnf.checkpoint import CheckpointError
from cnnf.records import RecordError, from_plain, read_json_lines
from cnnf.results import Check, Row, SweepResult, read_results
from cnnf.scoring import Scoring
from cnnf.sweep_progress import AttackRun, RunKey, SweepProgress
from cnnf.train import Position, Totals, read_metrics

SHIPPED_RESULTS = Path(__file__).parents[1] / "results" / "cnnf5_fmnist_1k.json"

SAVED_POSITION = {  # a checkpoint's position as the training code has always written it
    "epoch": 1, "step": 100, "global_step": 430,
    "totals": {"total": 9282.75, "ce": 7467.65, "rec": 18151.01, "cll": 0.0, "norm": 0.0,
               "correct": 9551, "correct_adv": 0, "seen": 12800, "seconds": 255.48},
}


def test_run_keys_are_ordered_values_with_the_progress_file_names():
    key = RunKey(0, "pgd40", "e2e", 0.1)
    assert key == RunKey(0, "pgd40", "e2e", 0.1) and len({key, RunKey(0, "pgd40", "e2e", 0.1)}) == 1
    assert key.name == "0|pgd40|e2e|0.1"
    assert sorted([RunKey(1, "fgsm", "first", 0.1), key]) == [key, RunKey(1, "fgsm", "first", 0.1)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.seed = 2


def test_scoring_is_written_t_slash_output_and_read_back():
    assert str(Scoring(5, "average")) == "5/average" and Scoring.parse("5/average") == Scoring(5, "average")
    with pytest.raises(ValueError, match="last, average"):
        Scoring(1, "mean")
    with pytest.raises(ValueError, match="iterations must be an integer >= 0"):
        Scoring(-1, "last")
    with pytest.raises(ValueError, match="'5/last'"):
        Scoring.parse("last")


def test_progress_file_keeps_its_layout(tmp_path: Path):
    """Runs are stored under "seed|attack|target|eps" and flags under "t/output", as before."""
    path = tmp_path / "sweep.progress.pt"
    flags = {Scoring(0, "last"): torch.tensor([True, False]), Scoring(2, "average"): torch.tensor([False, False])}
    SweepProgress(path, "sweep").put(RunKey(0, "fgsm", "first", 0.1), AttackRun(flags, 2.5))
    state = torch.load(path, weights_only=True)
    assert list(state["runs"]) == ["0|fgsm|first|0.1"]
    assert list(state["runs"]["0|fgsm|first|0.1"]["flags"]) == ["0/last", "2/average"]
    run = SweepProgress(path, "sweep").get(RunKey(0, "fgsm", "first", 0.1))
    assert run.seconds == 2.5 and run.flags.keys() == flags.keys()
    assert all(torch.equal(run.flags[s], flags[s]) for s in flags)
    assert SweepProgress(path, "sweep").get(RunKey(1, "fgsm", "first", 0.1)) is None


def _result() -> SweepResult:
    row = Row(attack="fgsm", target="e2e", eps=0.1, steps=1, restarts=1, step_size=0.2, early_stop=False,
              iterations=1, output="last", images=4, attacked_output=True, accuracy_mean=0.5,
              accuracy_std=0.0, accuracies=[0.5], seconds=1.5)
    worst = dataclasses.replace(row, attack="worst-case", target="all", steps=None, restarts=None,
                                step_size=None, early_stop=None, attacked_output=None, seconds=None)
    return SweepResult({"images": 4}, {"1/last": 0.75}, [row, worst], [Check(check="c", passed=True, detail="d")])


def test_results_round_trip_through_json(tmp_path: Path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_result().to_plain()))
    assert read_results(path) == _result()
    assert list(json.loads(path.read_text())["rows"][0]) == [f.name for f in dataclasses.fields(Row)]


def test_shipped_results_files_read_back_unchanged():
    """A results file written before rows were records (worst-case rows had no early_stop)."""
    plain = json.loads(SHIPPED_RESULTS.read_text())
    again = read_results(SHIPPED_RESULTS).to_plain()
    assert again["meta"] == plain["meta"] and again["clean"] == plain["clean"] and again["sanity"] == plain["sanity"]
    for old, new in zip(plain["rows"], again["rows"], strict=True):
        assert {**{"early_stop": None}, **old} == new


@pytest.mark.parametrize("content, needle", [
    (None, "not found"),
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at line 1"),
    ("[1, 2]", "expected a mapping"),
    ('{"meta": {}, "clean": {}, "rows": {}, "sanity": []}', "rows must be list"),
    ('{"meta": {}, "clean": {}, "rows": [{"attack": "fgsm"}], "sanity": []}', "rows[0]: missing key(s) target, eps"),
])
def test_bad_results_files_are_named(tmp_path: Path, content, needle):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecordError) as error:
        read_results(path)
    assert str(path) in str(error.value) and needle in str(error.value) and "\n" not in str(error.value)


def test_a_row_value_of_the_wrong_type_is_named(tmp_path: Path):
    plain = _result().to_plain()
    plain["rows"][1]["eps"] = "0.1"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(plain))
    with pytest.raises(RecordError, match=r"rows\[1\]: eps must be float, got '0.1' \(str\)"):
        read_results(path)


def test_position_is_saved_in_the_checkpoint_layout():
    position = Position.from_plain(SAVED_POSITION, "checkpoint.pt")
    assert position.epoch == 1 and position.totals.seen == 12800 and isinstance(position.totals, Totals)
    assert position.to_plain() == SAVED_POSITION
    assert Position().to_plain() == {"epoch": 0, "step": 0, "global_step": 0, "totals": dataclasses.asdict(Totals())}
    after = position.next_epoch()
    assert (after.epoch, after.step, after.global_step, after.totals) == (2, 0, 530, Totals())


def test_a_position_without_later_keys_reads_with_their_defaults():
    older = {key: value for key, value in SAVED_POSITION.items() if key != "global_step"}
    assert Position.from_plain(older, "checkpoint.pt").global_step == 0


@pytest.mark.parametrize("saved, needle", [
    (None, "expected a mapping"), ({**SAVED_POSITION, "epoch": "1"}, "epoch must be int"),
    ({**SAVED_POSITION, "totals": [0.0]}, "totals must be Totals"),
    ({**SAVED_POSITION, "totals": {"seen": 3.5}}, "totals: seen must be int")])
def test_a_malformed_position_names_the_checkpoint(saved, needle):
    with pytest.raises(CheckpointError, match="run/checkpoint.pt: position") as error:
        Position.from_plain(saved, "run/checkpoint.pt")
    assert needle in str(error.value)


def test_from_plain_refuses_unknown_keys_and_bools_for_numbers():
    with pytest.raises(RecordError, match=r"x: unknown key\(s\) extra; known keys: check, passed, warning, detail"):
        from_plain(Check, {"check": "c", "passed": True, "detail": "", "extra": 1}, "x")
    with pytest.raises(RecordError, match="seen must be int, got True"):
        from_plain(Totals, {"seen": True}, "x")


def test_metrics_lines_that_are_not_json_name_the_file_and_line(tmp_path: Path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "loss\n')
    with pytest.raises(RecordError, match=r"metrics\.jsonl is not valid JSON \(.* at line 2"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n[2]\n')
    with pytest.raises(RecordError, match="record 2 is not a JSON object with an integer epoch"):
        read_metrics(tmp_path)
    assert read_json_lines(tmp_path / "metrics.jsonl", "metrics file") == [{"epoch": 1}, [2]]
