from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, model_validator

from microgpt.common.config import ConfigBase, apply_overrides, dump_config, load_config, load_yaml, parse_value
from microgpt.common.errors import ConfigError


class ModelSection(ConfigBase):
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention heads.")
    n_embd: int = Field(128, description="Width.")

    @model_validator(mode="after")
    def _divisible(self) -> ModelSection:
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be divisible by n_head")
        return self


class TrainSection(ConfigBase):
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    max_steps: int = Field(100, description="Steps.")
    compile: bool = Field(False, description="torch.compile.")


class RunConfig(ConfigBase):
    out_dir: str = Field("runs/x", description="Output directory.")
    seed: int = Field(0, description="Seed.")
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 3\nmodel:\n  n_layer: 2\ntrain:\n  lr: 0.01\n")
    config = load_config(RunConfig, path, ["train.lr=3e-4", "model.n_layer=8", "train.compile=true"])
    assert config.seed == 3
    assert config.model.n_layer == 8
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.compile is True
    assert config.model.n_head == 4  # default kept


def test_unknown_field_names_the_field_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  n_heda: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, path)
    assert str(info.value) == "model.n_heda: unknown field; did you mean n_head?"
    assert info.value.exit_code == 2


def test_unknown_top_level_override() -> None:
    with pytest.raises(ConfigError, match=r"^sed: unknown field; did you mean seed\?$"):
        load_config(RunConfig, None, ["sed=1"])


def test_wrong_type_names_field_and_value() -> None:
    with pytest.raises(ConfigError, match=r"model\.n_layer: .*integer.*'eight'"):
        load_config(RunConfig, None, ["model.n_layer=eight"])


def test_cross_field_check_message() -> None:
    with pytest.raises(ConfigError, match="n_embd must be divisible by n_head"):
        load_config(RunConfig, None, ["model.n_embd=130"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(RunConfig, None, ["model.n_layer"])
    with pytest.raises(ConfigError, match="seed is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = load_config(RunConfig, None, ["model.n_layer=3", "train.lr=2e-4"])
    path = dump_config(config, tmp_path / "sub" / "config.yaml")
    again = load_config(RunConfig, path)
    assert again == config
    assert load_yaml(path)["model"]["n_layer"] == 3


def test_config_is_frozen() -> None:
    config = RunConfig()
    with pytest.raises(ValueError, match="frozen"):
        setattr(config, "seed", 5)  # noqa: B010 - mypy rightly refuses the direct assignment


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RunConfig, write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(RunConfig, write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3e-4", 3e-4), ("8", 8), ("true", True), ("[1, 2]", [1, 2]), ("gpt2", "gpt2"), ("", ""), ("null", None)],
)
def test_parse_value(text: str, expected: object) -> None:
    assert parse_value(text) == expected
