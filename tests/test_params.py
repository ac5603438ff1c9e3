import dataclasses

import pytest

from emojich.foundation.params import from_dict, load_params


@dataclasses.dataclass
class Inner:
    size: int = 1


@dataclasses.dataclass
class Outer:
    name: str = "x"
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_from_dict_builds_nested_dataclasses():
    outer = from_dict(Outer, {"name": "y", "inner": {"size": 3}})
    assert outer == Outer("y", Inner(3))


def test_from_dict_rejects_unknown_keys_with_their_path():
    with pytest.raises(ValueError, match=r"Outer.inner: unknown parameter\(s\) sise"):
        from_dict(Outer, {"inner": {"sise": 3}})


def test_project_params_have_one_section_per_stage():
    import yaml

    from tests.pipeline import ROOT

    params = load_params(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in stages:
        assert name.split("@")[0] in params, f"params.yaml has no section for stage {name}"
