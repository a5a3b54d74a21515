import subprocess
import sys
from pathlib import Path

import pytest

from stgt_pipeline import stages
from stgt_pipeline.cli import build_parser, main


def _option_actions(parser):
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_stage_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(s.name for s in stages.STAGES) <= set(sub.choices)
    for name, sp in sub.choices.items():
        assert sp.description, name
        for action in _option_actions(sp):
            assert action.help and len(action.help) > 10, f"stgt {name} {action.option_strings}"


@pytest.mark.parametrize("argv", [["--help"], ["prepare", "--help"], ["extract_frames", "--help"]])
def test_help_exits_zero_and_describes(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: stgt" in out
    if len(argv) > 1:
        assert "--set KEY=VALUE" in out and "--params FILE" in out


def test_user_error_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "p.yaml").write_text("prepare:\n  seed: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stgt_pipeline.cli", "prepare", "--params", str(tmp_path / "p.yaml"),
         "--set", "prepare.num_videos=lots"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "prepare.num_videos" in proc.stderr


def test_missing_input_names_the_producer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("")
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "input 'dataset' not found at data/prepared" in err and "stgt prepare" in err


def test_a_named_params_file_that_does_not_exist_is_one_line_and_nothing_is_written(tmp_path):
    # A typo in --params used to run the built-in defaults and replace data/prepared.
    proc = subprocess.run(
        [sys.executable, "-m", "stgt_pipeline.cli", "prepare", "--params", "does_not_exist.yaml",
         "--set", "prepare.num_videos=4"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["error: params file does_not_exist.yaml not found (check the --params path)"]
    assert list(tmp_path.iterdir()) == []  # no outputs, no reports, no tracking store


def test_pipeline_commands_refuse_a_missing_params_file_too(tmp_path, capsys):
    out = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", "--params", str(tmp_path / "typo.yaml"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: params file {tmp_path / 'typo.yaml'} not found (check the --params path)"
    assert not out.exists()


def test_absent_default_params_file_means_the_built_in_defaults_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate"]) == 2  # the defaults load; the missing input is what stops it
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"note: no params.yaml in {tmp_path}: using the built-in defaults (stgt_pipeline/params.py)"
    assert err[1].startswith("error: validate: input 'dataset' not found")


def test_import_checkpoint_is_dispatched_with_one_line_error(tmp_path, capsys):
    assert main(["import-checkpoint", str(tmp_path / "absent.pth"), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.pth" in err[0]
    assert not (tmp_path / "out.safetensors").exists()


def test_configuration_errors_from_the_library_become_one_line(tmp_path, monkeypatch, capsys):
    from stgt_model.engine import TooFewSamples
    from stgt_pipeline.components.prepare import stage as prepare

    def too_small(params, inputs, outputs):
        raise TooFewSamples("6 training samples make no full step of batch 16")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("")
    monkeypatch.setattr(prepare, "run", too_small)
    assert main(["prepare"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: prepare: 6 training samples make no full step of batch 16"


def test_restart_is_offered_by_exactly_the_stages_that_resume_from_a_work_folder(capsys):
    from tests.conftest import REPO_ROOT

    resumable = {s.name for s in stages.STAGES
                 if "open_work_dir(" in (REPO_ROOT / "components" / s.name / "stage.py").read_text()}
    assert resumable == {s.name for s in stages.STAGES if s.resumable}  # the stage table's flag
    for stage in stages.STAGES:
        with pytest.raises(SystemExit):
            main([stage.name, "--help"])
        shown = capsys.readouterr().out
        assert ("--restart" in shown) == (stage.name in resumable), stage.name
        if stage.name in resumable:
            assert f"STGT_RESTART=1 dvc repro {stage.name}" in " ".join(shown.split())


def test_outputs_reads_the_summaries_of_foreach_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """`stgt outputs` (which `make run` ends with) finds a foreach stage's summaries where dvc.yaml has it write
    them, reports/<stage>/<item>.json, not reports/<stage>.json."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports" / "finetune").mkdir(parents=True)
    (tmp_path / "reports" / "finetune" / "retrieval.json").write_text('{"seconds": 30.5}')
    (tmp_path / "reports" / "finetune" / "qa.json").write_text('{"seconds": 50.1}')
    (tmp_path / "reports" / "prepare.json").write_text('{"seconds": 12.0}')
    assert main(["outputs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "finetune         done in 30.5s + 50.1s" in lines
    assert "prepare          done in 12.0s" in lines
    assert "validate         not run" in lines
    assert "  summary        reports/finetune/qa.json" in lines
