"""Schema-checked YAML configs: inheritance, overrides, and one clear error per fault."""
import pytest

from backbones.utils.config import ConfigError, load_config

DEFAULTS = {
    "solver": {"lr": 0.1, "max_iter": 100, "steps": [50, 75], "amp": False},
    "data": {"on_error": "raise", "root": None},
}


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("solver:\n  lr: 0.5\n  max_iter: 10\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nsolver:\n  max_iter: 20\ndata:\n  root: /x\n")
    cfg = load_config(DEFAULTS, str(child), ["solver.steps=[5, 8]", "solver.amp=true"])
    assert cfg.solver.lr == 0.5 and cfg.solver.max_iter == 20 and cfg.solver.steps == [5, 8]
    assert cfg.solver.amp is True and cfg.data.root == "/x" and cfg.data.on_error == "raise"
    assert DEFAULTS["solver"]["lr"] == 0.1  # defaults are not mutated


def test_int_is_accepted_for_float():
    assert load_config(DEFAULTS, None, ["solver.lr=1"]).solver.lr == 1.0


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("solver:\n  max_iters: 5\n")
    with pytest.raises(ConfigError, match=r"solver\.max_iters.*bad\.yaml.*did you mean 'solver\.max_iter'"):
        load_config(DEFAULTS, str(path))


def test_unknown_override_suggests_closest():
    with pytest.raises(ConfigError, match=r"'data\.on_eror'.*did you mean 'data\.on_error'"):
        load_config(DEFAULTS, None, ["data.on_eror=skip"])


@pytest.mark.parametrize("override", ["solver.max_iter=1.5", "solver.amp=yes please", "solver.steps=3",
                                      "solver.lr=fast"])
def test_wrong_type_is_an_error(override):
    with pytest.raises(ConfigError, match="expects"):
        load_config(DEFAULTS, None, [override])


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("solver:\n  lr: 0.1\n  max_iter: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml line \d+"):
        load_config(DEFAULTS, str(path))


def test_override_without_equals_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(DEFAULTS, None, ["solver.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DEFAULTS, str(tmp_path / "nope.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"solver: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(DEFAULTS, str(path))
    assert not marker.exists()


def test_base_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(DEFAULTS, str(tmp_path / "a.yaml"))
