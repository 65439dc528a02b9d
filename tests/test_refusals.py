"""Refusals read as one line with the fix, exit 2, list no schema entries, and leave nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import TINY, read_metrics, run_cli
from trpo_lab.app import CONF_DIR, discard_refused_run_dir
from trpo_lab.config import register_configs
from trpo_lab.refusals import closest, explain


def composition_error(*overrides: str) -> BaseException:
    """The exception Hydra raises composing the app's config with these overrides."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            compose(config_name="config", overrides=list(overrides))
        except Exception as error:  # noqa: BLE001  (the error under test)
            return error
    raise AssertionError(f"{overrides} composed")


EXPLAINED = [
    ("policy.hidden_sizes=64", "invalid value policy.hidden_sizes=64: must be a list: write "
     "'policy.hidden_sizes=[64]' (quoted for the shell)"),
    ("total_steps=1e5", "invalid value total_steps=1e5: must be an integer: write "
     "total_steps=100000"),
    ("gamma=0.99.", "invalid value gamma=0.99.: must be a number, e.g. gamma=0.99"),
    ("seed=abc", "invalid value seed=abc: must be an integer, e.g. seed=0"),
    ("progress=maybe", "invalid value progress=maybe: must be true or false, e.g. progress=true"),
    ("critic.hidden_sizes=[a]", "invalid value critic.hidden_sizes=[a]: must be a list of "
     "integers, e.g. 'critic.hidden_sizes=[64,64]' (quoted for the shell)"),
    ("algo.delta=abc", "invalid value algo.delta=abc: must be a number, e.g. algo.delta=0.01"),
    ("algo=trop", "unknown option algo=trop: did you mean algo=trpo? options: kl_penalty, npg, "
     "ppo, trpo, vpg"),
    ("env=Pendulum", "unknown option env=Pendulum: did you mean env=pendulum? options: cartpole, "
     "chain, custom, garnet, gridworld, hopper, minatar, pendulum, swimmer, walker2d"),
    ("policy=xyz", "unknown option policy=xyz: options: cnn, linear, mlp, module, tabular"),
    ("algo.deltaa=0.1", "unknown key algo.deltaa: did you mean algo.delta?"),
    ("algo.beta=1", "unknown key algo.beta for algo=trpo: it is a key of algo=kl_penalty"),
]


@pytest.mark.parametrize("override,message", EXPLAINED, ids=[o for o, _ in EXPLAINED])
def test_composition_errors_are_explained_in_one_line_with_the_fix(override, message):
    assert explain(composition_error(override)) == message


def test_schema_entries_are_not_options_of_their_groups():
    for group, schema in [("algo", "trpo_schema"), ("algo", "ppo_schema"),
                          ("env", "env_schema"), ("policy", "policy_schema")]:
        text = explain(composition_error(f"{group}={schema}"))
        assert text.startswith(f"unknown option {group}={schema}: options: ")
        assert "_schema" not in text.split("options: ")[1]


def test_closest_prefers_the_same_word_in_another_case():
    assert closest("Pendulum", ["cartpole", "pendulum"]) == "pendulum"
    assert closest("trop", ["trpo", "npg", "ppo"]) == "trpo"
    assert closest("zzz", ["trpo", "npg"]) is None


CLI_CASES = [
    (["total_steps=1e5"], "trpo-lab: error: invalid value total_steps=1e5: must be an integer: "
     "write total_steps=100000"),
    (["algo=trop"], "trpo-lab: error: unknown option algo=trop: did you mean algo=trpo? "
     "options: kl_penalty, npg, ppo, trpo, vpg"),
    (["algo=trpo_schema"], "trpo-lab: error: unknown option algo=trpo_schema: options: "
     "kl_penalty, npg, ppo, trpo, vpg"),
    (["algo.delta=-1"], "trpo-lab: error: invalid value algo.delta=-1.0: must be a finite number "
     "in (0, 10]"),
    (["env.id=NoSuchEnv-v9"], None),  # refused while building the env, after Hydra's job start
]


@pytest.mark.parametrize("args,line", CLI_CASES, ids=[a[0] for a, _ in CLI_CASES])
def test_cli_refusal_is_one_line_exit_2_and_leaves_no_run_directory(args, line, tmp_path):
    run_dir = tmp_path / "outputs" / "day" / "run"
    result = run_cli([*args, "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if line is not None:
        assert lines[0] == line
    assert lines[0].startswith("trpo-lab: error: ")
    assert not (tmp_path / "outputs").exists()  # nor the parents Hydra made for it


def test_refusal_in_the_default_run_directory_leaves_no_outputs(tmp_path):
    result = run_cli(["algo.delta=-1", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []


def test_refusal_in_the_directory_of_a_previous_run_keeps_that_run(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli([*TINY, "logger=none", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path).returncode == 0
    result = run_cli([*TINY, "logger=none", "algo.delta=-1", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    assert len(read_metrics(run_dir)) == 2 and (run_dir / "summary.json").exists()


def test_discard_removes_only_a_new_directory_with_nothing_but_hydra_files(tmp_path):
    def hydra_dir(path: Path, *extra: str) -> Path:
        (path / ".hydra").mkdir(parents=True)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (path / ".hydra" / name).write_text("a: 1\n")
        (path / "app.log").write_text("")
        for name in extra:
            (path / name).write_text("x")
        return path

    new = hydra_dir(tmp_path / "a" / "b" / "run")
    assert discard_refused_run_dir(new, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the parents it made went too
    kept = hydra_dir(tmp_path / "c" / "run", "metrics.csv")
    assert not discard_refused_run_dir(kept, tmp_path) and kept.exists()
    existed = hydra_dir(tmp_path / "d")
    assert not discard_refused_run_dir(existed, existed) and existed.exists()


def test_help_lists_no_schema_entries(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "algo: kl_penalty, npg, ppo, trpo, vpg" in result.stdout
    assert ("env: cartpole, chain, custom, garnet, gridworld, hopper, minatar, pendulum, "
            "swimmer, walker2d") in result.stdout
    assert "policy: cnn, linear, mlp, module, tabular" in result.stdout
    assert "_schema" not in result.stdout
