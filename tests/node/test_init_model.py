"""`init --model` sets model.path in a new and in an existing config.toml, keeps its other lines, refuses ''."""

from click.testing import CliRunner

from openlora.node.cli import cli
from openlora.node.config import load_config


def test_init_model_sets_the_path_in_new_and_existing_configs(tmp_path):
    home, pw = tmp_path / "home", tmp_path / "pw"
    pw.write_text("a-password-123\n")
    r = CliRunner().invoke(cli, ["--home", str(home), "init", "--password-file", str(pw), "--model", "smollm2"])
    assert r.exit_code == 0, r.output
    assert load_config(home, environ={}).model.path == "smollm2"
    text = (home / "config.toml").read_text()
    r = CliRunner().invoke(cli, ["--home", str(home), "init", "--model", "demo"])
    assert r.exit_code == 0 and "model.path = 'demo'" in r.output, r.output
    assert load_config(home, environ={}).model.path == "demo"
    after = (home / "config.toml").read_text()
    assert len(after.splitlines()) == len(text.splitlines())          # one line changed, comments kept
    assert sum(a != b for a, b in zip(after.splitlines(), text.splitlines())) == 1
    r = CliRunner().invoke(cli, ["--home", str(home), "init", "--model", ""])
    assert r.exit_code != 0
    assert load_config(home, environ={}).model.path == "demo"         # nothing written
