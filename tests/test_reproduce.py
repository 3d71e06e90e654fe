"""`cnnf reproduce`: figure 6 end to end under the quick profile on synthetic data, skipping
and resuming, records that plots read alone, one-line errors, and the corruptions."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnf.cli import main
from cnnf.corruptions import CORRUPTIONS, corrupt, corrupt_set
from cnnf.data import ImageSet
from cnnf.reproduce import evaluations, training
from cnnf.reproduce.experiments import EXPERIMENTS, MODELS
from cnnf.reproduce.profiles import PROFILES
from cnnf.reproduce.results import figure_path, read_figure
from synthetic import make_fashion_dir

QUICK = ["--profile", "quick"]


@pytest.fixture(scope="module")
def fig6(tmp_path_factory, one_thread) -> Path:
    """The output folder of `cnnf reproduce 6 --profile quick` on synthetic Fashion-MNIST."""
    root = tmp_path_factory.mktemp("reproduce")
    make_fashion_dir(root / "data" / "fashion-mnist", n_train=300, n_test=40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNF_DATA_DIR", str(root / "data"))
        assert main(["reproduce", "6", *QUICK, "--out", str(root / "out")]) == 0
    return root / "out"


@pytest.fixture
def data_env(fig6: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNF_DATA_DIR", str(fig6.parent / "data"))


def _outputs(out: Path) -> dict[Path, int]:
    """mtime (ns) of every trained model and evaluation file under `out`."""
    return {p: p.stat().st_mtime_ns for pattern in ("models/*/model.pt", "models/*/eval/*.json") for p in out.glob(pattern)}


def test_figure_record_has_the_documented_fields_and_per_seed_data(fig6: Path):
    path = figure_path(fig6, "6")
    plain = json.loads(path.read_text())
    assert set(plain) == {"figure", "title", "profile", "claim", "notes", "meta", "models", "panels", "strongest"}
    assert plain["figure"] == "6" and plain["profile"] == "quick" and plain["claim"] == EXPERIMENTS["6"].claim
    assert {"git_revision", "host", "torch", "date", "command", "wall_seconds", "compute_seconds"} <= set(plain["meta"])
    assert plain["meta"]["command"].startswith("cnnf reproduce 6 --profile quick --seeds 2")
    assert {m["name"] for m in plain["models"]} == {"cnn_fmnist"} | {f"cnnf{k}_fmnist" for k in range(1, 6)}
    assert all(m["seeds"] == [0, 1] and m["config"]["epochs"] == 1 for m in plain["models"])
    result = read_figure(path)
    assert [p.id for p in result.panels] == ["a", "b", "c", "d"]
    assert "PGD-3 (for PGD-40)" in result.panels[1].title
    for series in (s for panel in result.panels for s in panel.series):
        assert len(series.per_seed) == 2 and all(len(v) == len(series.x) for v in series.per_seed)
        for i, values in enumerate(zip(*series.per_seed)):
            assert series.mean[i] == pytest.approx(statistics.fmean(values))
            assert series.std[i] == pytest.approx(statistics.stdev(values))
    assert result.panels[0].series[0].x == [0.0, 0.1, 0.2]
    assert [s.label for s in result.panels[3].series] == [f"N = {t}" for t in range(6)]
    columns = {(row.model, row.evaluation) for row in result.strongest}
    assert {("cnnf5_fmnist", "pgd3 first"), ("cnnf5_fmnist", "pgd3 e2e"), ("cnnf5_fmnist", "worst case"),
            ("cnn_fmnist", "clean")} <= columns
    assert figure_path(fig6, "6").with_suffix(".png").stat().st_size > 0


def test_clean_accuracy_agrees_across_panels_of_one_model(fig6: Path):
    """Points that measure the same thing through different evaluations agree: eps 0 of FGSM
    and of PGD is each seed's clean accuracy."""
    panels = read_figure(figure_path(fig6, "6")).panels
    fgsm, pgd = panels[0].series[1], panels[1].series[1]
    assert [seed[0] for seed in fgsm.per_seed] == [seed[0] for seed in pgd.per_seed]


def test_a_second_run_trains_and_evaluates_nothing(fig6: Path, data_env, monkeypatch):
    before = _outputs(fig6)
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("retrained a finished model"))
    monkeypatch.setattr(evaluations, "run_sweep", lambda *a, **k: pytest.fail("re-ran a finished evaluation"))
    assert main(["reproduce", "6", *QUICK, "--out", str(fig6)]) == 0
    assert _outputs(fig6) == before


def test_an_interrupted_run_resumes_where_it_stopped(fig6: Path, data_env, tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(fig6, out)
    (out / "models" / "cnnf2_fmnist-seed1" / "model.pt").unlink()  # killed after its last checkpoint
    (out / "models" / "cnn_fmnist-seed0" / "eval" / "fgsm-first.json").unlink()  # killed during the sweep
    trained, swept = [], []
    real_train, real_sweep = training.train, evaluations.run_sweep
    monkeypatch.setattr(training, "train", lambda folder, *a, **k: trained.append((folder.name, k)) or real_train(folder, *a, **k))
    monkeypatch.setattr(evaluations, "run_sweep", lambda *a, **k: swept.append(k["progress"].name) or real_sweep(*a, **k))
    assert main(["reproduce", "6", *QUICK, "--out", str(out)]) == 0
    assert trained == [("cnnf2_fmnist-seed1", {"resume": True, "device": None})]
    assert swept == ["fgsm-first.progress.pt"]
    assert (out / "models" / "cnnf2_fmnist-seed1" / "model.pt").is_file()


def test_a_run_folder_with_another_config_is_refused(fig6: Path, data_env, tmp_path: Path, capsys):
    out = tmp_path / "out"
    shutil.copytree(fig6, out)
    config = out / "models" / "cnn_fmnist-seed0" / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2"))
    err = _error(capsys, ["reproduce", "6", *QUICK, "--out", str(out)])
    assert "cnn_fmnist-seed0 holds a run with another config (differs in epochs)" in err


def test_plot_and_table_read_only_the_record(fig6: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    record = figure_path(out, "6")
    record.parent.mkdir(parents=True)
    shutil.copy(figure_path(fig6, "6"), record)  # no models, no evaluations
    assert main(["reproduce", "6", *QUICK, "--out", str(out), "--plot-only"]) == 0
    assert record.with_suffix(".png").stat().st_size > 0
    capsys.readouterr()
    assert main(["reproduce", "6", *QUICK, "--out", str(out), "--table"]) == 0
    table = capsys.readouterr().out
    series = read_figure(record).panels[0].series[1]
    assert f"| CNN-F-5 | {series.mean[0]:.1f} ± {series.std[0]:.1f} |" in table
    assert "Strongest evaluation" in table and "Cost: training" in table


def _error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnf: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "5"], "argument FIGURE: unknown figure '5'; choose from 6, 7, 8, 10, 11, 12, 13, corruptions, all"),
    (["reproduce", "6", "--profile", "fast"], "argument --profile: invalid choice: 'fast'"),
    (["reproduce", "6", "--seeds", "0"], "argument --seeds: expected an integer >= 1"),
    (["reproduce", "6", "--plot-only", "--table"], "not allowed with argument"),
    (["reproduce", "6", "--plot-only", "--out", "NOWHERE"], "no record NOWHERE/figures/fig6.json; run `cnnf reproduce 6"),
])
def test_bad_reproduce_arguments(capsys, tmp_path: Path, args, needle):
    args = [str(tmp_path / "none") if a == "NOWHERE" else a for a in args]
    assert needle.replace("NOWHERE", str(tmp_path / "none")) in _error(capsys, args)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_every_model_of_every_figure_has_a_valid_config(profile, tmp_path: Path):
    for name in {m for e in EXPERIMENTS.values() for m in e.models()}:
        config = training.model_config(name, profile, 1, tmp_path)
        assert config.seed == 1
        if config.adversarial is not None:
            assert config.adversarial["attack"] == profile.attack(config.adversarial["attack"])
            base = MODELS[name].finetune_from
            assert (config.init_from == str(training.run_dir(tmp_path, base, 1))) == profile.finetune_adversarial


def test_shared_evaluations_cover_every_panel_that_uses_them():
    """fig 7b and 8b show the same (model, attack): one evaluation, with the wide eps grid."""
    profile = PROFILES["cpu"]
    unit = evaluations.attack_unit("adv_pgd40_cnnf5_fmnist", "pgd40", "first", profile)
    assert unit.eps == tuple(sorted(set(profile.eps) | set(profile.eps_wide)))
    assert evaluations.attack_unit("cnn_fmnist", "pgd40", "e2e", profile).targets == ("first",)


# --- corruptions -------------------------------------------------------------------------------

def _smooth_images(n: int = 16) -> torch.Tensor:
    """Image-like inputs in [-1, 1]: random 7 x 7 patterns upsampled to 28 x 28, with extremes."""
    coarse = torch.rand(n, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    x = F.interpolate(coarse, size=(28, 28), mode="bilinear") * 2 - 1
    x[0, 0, :4] = -1
    x[1, 0, :4] = 1
    return x


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_are_deterministic_and_keep_the_range(name):
    x = _smooth_images()
    for severity in range(1, 6):
        y = corrupt(x, name, severity, seed=3)
        assert torch.equal(y, corrupt(x, name, severity, seed=3))
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_grows_the_distance_from_the_clean_image(name):
    x = _smooth_images()
    distances = [(corrupt(x, name, severity) - x).abs().mean().item() for severity in range(1, 6)]
    assert distances[0] > 0 and all(b > a for a, b in zip(distances, distances[1:])), distances


def test_noise_depends_on_the_seed_and_sets_keep_bytes_and_labels():
    x = _smooth_images()
    assert not torch.equal(corrupt(x, "gaussian_noise", 3, seed=0), corrupt(x, "gaussian_noise", 3, seed=1))
    images = ImageSet(((x + 1) * 127.5).round().to(torch.uint8), torch.arange(16) % 10)
    corrupted = corrupt_set(images, "contrast", 5)
    assert corrupted.images.dtype == torch.uint8 and torch.equal(corrupted.labels, images.labels)


@pytest.mark.parametrize("name, severity, needle", [
    ("contrast", 0, "severity must be an integer 1..5 (0 is the clean image: do not corrupt it), got 0"),
    ("contrast", 6, "severity must be an integer 1..5"),
    ("contrast", 2.0, "severity must be an integer 1..5"),
    ("fog", 1, "unknown corruption 'fog'; choose from gaussian_noise, shot_noise"),
])
def test_bad_corruption_arguments_give_one_line(name, severity, needle):
    with pytest.raises(ValueError) as error:
        corrupt(_smooth_images(), name, severity)
    assert needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_every_figure_runs_under_the_quick_profile(tmp_path: Path, one_thread):
    """Every figure on the real data sets (Fashion-MNIST and MNIST; `make setup` installs them)."""
    assert main(["reproduce", "all", *QUICK, "--out", str(tmp_path)]) == 0
    for figure in EXPERIMENTS:
        assert read_figure(figure_path(tmp_path, figure)).panels
