"""tarpo/reward_plugin.py: reward.function is checked at config time, loaded once, and called per completion."""

import sys
import textwrap

import pytest
from typer.testing import CliRunner

from tarpo.config import ConfigError, load_config
from tarpo.reward_plugin import RewardFunctionError, check_reward, load_reward_function, plugin_reward_fn
from test_config import PARAMS

EXAMPLE = "examples.reward_plugin:correct_and_brief"


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path holding plugin modules written by the test (forgotten again afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)
    load_reward_function.cache_clear()


def problems(spec: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(PARAMS, [f"reward.function={spec}"])
    return info.value.problems


def test_the_example_plugin_validates_and_builtin_rules_stay_the_default():
    assert load_config(PARAMS).reward.function is None
    assert load_config(PARAMS, [f"reward.function={EXAMPLE}"]).reward.function == EXAMPLE
    assert plugin_reward_fn(EXAMPLE)(["5 + 7 = 12 #### 12", "#### 13"], ["12", "12"],
                                     records=[{"id": "a"}, {"id": "b"}]) == [1 - 0.5 * 5 / 40, 0.0]


def test_bad_specs_are_one_line_naming_the_key(plugin_dir):
    plugin_dir("raises_on_import", "raise RuntimeError('boom')\n")
    plugin_dir("shapes", """
        LIMIT = 3
        def two_args(completion, gold):
            return 1.0
        def three_args(completion, gold, record):
            return 1.0
    """)
    cases = {
        "no_colon_here": "'no_colon_here' is not package.module:callable",
        "not_a_module_xyz:f": "cannot import 'not_a_module_xyz' (ModuleNotFoundError",
        "raises_on_import:f": "cannot import 'raises_on_import' (RuntimeError: boom)",
        "shapes:missing": "module 'shapes' has no attribute 'missing'",
        "shapes:LIMIT": "shapes:LIMIT is not callable (it is int 3)",
        "shapes:two_args": "shapes:two_args must accept (completion, gold, record): too many positional arguments",
    }
    for spec, message in cases.items():
        lines = problems(spec)
        assert len(lines) == 1 and lines[0].startswith(f"reward.function: {message}"), (spec, lines)
    assert load_config(PARAMS, ["reward.function=shapes:three_args"]).reward.function == "shapes:three_args"


def test_cli_exits_2_with_one_line(plugin_dir):
    import cli

    result = CliRunner().invoke(cli.app, ["config", "validate", str(PARAMS), "--set", "reward.function=nope_xyz:f"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "reward.function: cannot import 'nope_xyz' (ModuleNotFoundError: No module named 'nope_xyz')"]


def test_loaded_once_per_process(plugin_dir):
    plugin_dir("counted", """
        import builtins
        builtins.counted_imports = getattr(builtins, "counted_imports", 0) + 1
        def reward(completion, gold, record):
            return 0.0
    """)
    import builtins

    first = load_reward_function("counted:reward")
    load_config(PARAMS, ["reward.function=counted:reward"])
    sys.modules.pop("counted")  # a second import would run the module again; the cache must not need it
    assert load_reward_function("counted:reward") is first and plugin_reward_fn("counted:reward")
    assert builtins.counted_imports == 1
    del builtins.counted_imports


@pytest.mark.parametrize("value", [float("nan"), 1.5, -2, "1", None, float("inf")])
def test_a_value_outside_the_contract_names_key_value_and_record(value):
    with pytest.raises(RewardFunctionError) as info:
        check_reward(value, "m:f", "rec-7")
    assert str(info.value) == (f"reward.function: m:f returned {value!r} for record 'rec-7'; it must return a "
                               "finite number in [-1, 1]")


@pytest.mark.parametrize("value,expected", [(True, 1.0), (0, 0.0), (-1, -1.0), (0.25, 0.25)])
def test_values_inside_the_contract_become_floats(value, expected):
    assert check_reward(value, "m:f", "r") == expected


def test_trainer_passes_each_rows_own_record(tmp_path, plugin_dir):
    """The plugin sees the record of the prompt each completion answered (its id encodes the prompt index)."""
    from tarpo.records import Record
    from tarpo.trainer import step_prompt_indices
    from test_trainer import in_process_trainer
    from train_driver import PROMPTS

    plugin_dir("by_record", """
        def reward(completion, gold, record):
            assert gold == record["answer"] and isinstance(completion, str)
            return int(record["id"]) / 100
    """)
    records = [Record(id=str(i), prompt=p, answer=f"gold-{i}", source="test") for i, p in enumerate(PROMPTS)]
    trainer = in_process_trainer(tmp_path, plugin_reward_fn("by_record:reward"), prompts=4,
                                 answers=[r.answer for r in records])
    trainer.records = records
    outcome = trainer.train_step()
    order = step_prompt_indices(0, 4, len(PROMPTS), trainer.settings.seed)
    assert outcome.rewards == [i / 100 for i in order for _ in range(4)]
