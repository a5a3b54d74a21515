import pytest

from stgt_pipeline.errors import ConfigError
from stgt_pipeline.params import check_params_file, load_params, parse_override


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_defaults_when_file_missing(tmp_path):
    params = load_params(tmp_path / "absent.yaml")
    assert params.prepare.source == "synthetic"
    assert params.section("validate").min_caption_chars == 3


def test_check_params_file_names_a_missing_file_or_a_folder(tmp_path):
    check_params_file(write(tmp_path, "prepare: {}\n"))
    with pytest.raises(ConfigError, match=f"^params file {tmp_path / 'typo.yaml'} not found"):
        check_params_file(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="is not a file"):
        check_params_file(tmp_path)


def test_unknown_key_names_dotted_path(tmp_path):
    p = write(tmp_path, "prepare:\n  num_video: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_params(p)
    assert f"{p}: prepare.num_video: unknown key" in str(exc.value)


def test_unknown_nested_key_and_section(tmp_path):
    p = write(tmp_path, "validate:\n  duration_s: {min: 1, max: 2, avg: 3}\ntrain: {}\n")
    with pytest.raises(ConfigError) as exc:
        load_params(p)
    msg = str(exc.value)
    assert "validate.duration_s.avg: unknown key" in msg
    assert "train: unknown key" in msg


def test_bad_type_names_path_expectation_and_value(tmp_path):
    p = write(tmp_path, "extract_frames:\n  num_frames: many\n")
    with pytest.raises(ConfigError) as exc:
        load_params(p)
    msg = str(exc.value)
    assert "extract_frames.num_frames" in msg
    assert "integer" in msg and "'many'" in msg


def test_bad_value_range_and_literal(tmp_path):
    p = write(tmp_path, "prepare:\n  source: youtube\n  fps: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_params(p)
    msg = str(exc.value)
    assert "prepare.source" in msg and "'synthetic' or 'folder'" in msg
    assert "prepare.fps" in msg and "greater than or equal to 1" in msg


def test_cross_field_rule(tmp_path):
    with pytest.raises(ConfigError, match=r"val_share \+ test_share must be below 1"):
        load_params(write(tmp_path, "prepare:\n  val_share: 0.5\n  test_share: 0.5\n"))
    with pytest.raises(ConfigError, match="needs prepare.folder.root"):
        load_params(write(tmp_path, "prepare:\n  source: folder\n"))
    with pytest.raises(ConfigError, match="needs pair_twins: true"):
        load_params(write(tmp_path, "pretrain:\n  stage1:\n    losses: [vtc, twin]\n    steps: 5\n"
                                    "    pair_twins: false\n"))


def test_set_overrides_typed_values(tmp_path):
    p = write(tmp_path, "prepare:\n  num_videos: 10\n")
    params = load_params(p, ["prepare.num_videos=40", "prepare.folder.root=/videos", "validate.required_splits=[train]"])
    assert params.prepare.num_videos == 40
    assert params.prepare.folder.root == "/videos"
    assert params.section("validate").required_splits == ["train"]


def test_set_unknown_key_fails_with_path(tmp_path):
    with pytest.raises(ConfigError, match=r"\(with --set\): prepare.nope: unknown key"):
        load_params(write(tmp_path, ""), ["prepare.nope=1"])


def test_set_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("prepare.num_videos")
    with pytest.raises(ConfigError, match="empty part"):
        parse_override("prepare..x=1")
    assert parse_override("a.b=1.5") == (["a", "b"], 1.5)
    assert parse_override("a.b=true") == (["a", "b"], True)


def test_set_into_a_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="prepare.seed is a value, not a section"):
        load_params(write(tmp_path, "prepare:\n  seed: 1\n"), ["prepare.seed.x=1"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "prepare:\n  seed: 1\n  bad: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+: not valid YAML"):
        load_params(p)


def test_repo_params_file_is_valid():
    from tests.conftest import REPO_ROOT

    load_params(REPO_ROOT / "params.yaml")
