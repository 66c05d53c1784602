"""What a new user meets first: every command's help, `flead evaluate` on CSV files that are not read
as they look (separator, hidden devices), and `flead services status` with everything down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from flead.local.services import free_port
from flead_cli import app

FLEAD = str(Path(sys.executable).parent / "flead")
WIDE = {"COLUMNS": "200", "TERM": "dumb"}


def command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `group` (Typer's own click groups: they have ``commands``)."""
    paths = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_no_help_shows_a_bool_placeholder_or_a_backtick():
    paths = command_paths(typer.main.get_command(app))
    assert len(paths) > 20 and ("local", "up") in paths and ("demo",) in paths
    runner = CliRunner()
    flags = 0
    for path in paths:
        shown = runner.invoke(app, [*path, "--help"], env=WIDE)
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, (path, shown.output)
        assert "`" not in shown.output, (path, shown.output)
        assert "--help" in shown.output
        flags += shown.output.count("--no-")
    assert flags > 3  # the boolean flags are still listed, just without a placeholder
    demo = runner.invoke(app, ["demo", "--help"], env=WIDE).output
    assert "--full " in demo and "<int range>" in demo  # options that take a value keep their type


def test_the_up_command_help_names_dagster_dev_without_markup():
    shown = CliRunner().invoke(app, ["up", "--help"], env=WIDE).output
    assert "dagster dev" in shown and "flead up" in shown and "`" not in shown


def evaluate(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEAD_HOME": str(home), **WIDE}
    return subprocess.run(
        [FLEAD, "evaluate", "--mode", "zscore", *args], env=env, capture_output=True, text=True, timeout=300
    )


def readings(devices: int = 1, n: int = 40) -> pl.DataFrame:
    """`n` readings per device, every 7th labelled."""
    return pl.DataFrame(
        {
            "device": [f"d{d}" for d in range(devices) for _ in range(n)],
            "temperature": [20.0 + (i % 5) * 0.1 + d for d in range(devices) for i in range(n)],
            "label": [int(i % 7 == 6) for _ in range(devices) for i in range(n)],
        }
    )


@pytest.mark.parametrize("typed", ["\\t", "tab", "TAB"])
def test_a_backslash_t_or_tab_separator_reads_a_tab_separated_file(tmp_path, typed):
    path = tmp_path / "export.txt"
    readings().drop("device").write_csv(path, separator="\t")
    done = evaluate(tmp_path / "home", "--sep", typed, str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "40 readings of 1 devices" in done.stdout and "features temperature" in done.stdout


@pytest.mark.parametrize(("separator", "flag"), [(";", ";"), ("\t", "\\t"), ("|", "|")])
def test_a_file_with_another_separator_gets_the_one_to_pass(tmp_path, separator, flag):
    path = tmp_path / "readings.csv"
    readings().drop("device").write_csv(path, separator=separator)
    done = evaluate(tmp_path / "home", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"looks '{flag}'-separated: pass --sep '{flag}'" in done.stdout.replace("\n", " ")
    again = evaluate(tmp_path / "home", "--sep", flag, str(path))
    assert again.returncode == 0, again.stdout + again.stderr


def test_decimal_commas_in_a_semicolon_file_are_named(tmp_path):
    path = tmp_path / "european.csv"
    path.write_text("temperature;label\n" + "".join(f"20,{i % 9};{int(i % 7 == 6)}\n" for i in range(40)))
    wrong = evaluate(tmp_path / "home", str(path))  # read with ',' the header has no ',' but a ';'
    assert wrong.returncode == 1 and "pass --sep ';'" in wrong.stdout
    done = evaluate(tmp_path / "home", "--sep", ";", str(path))
    out = " ".join(done.stdout.split())
    assert done.returncode == 1 and "no numeric feature columns" in out
    assert "'temperature' holds numbers with a decimal comma (e.g. '20,0')" in out, out


def test_a_file_of_two_devices_without_a_device_column_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "fleet.csv"
    readings(devices=2).write_csv(path)
    refused = evaluate(tmp_path / "home", str(path))
    out = " ".join(refused.stdout.split())
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "column 'device' looks like a device id (2 distinct values: d0, d1)" in out, out
    assert "pass --device device" in out and "--one-device-per-file" in out

    by_device = evaluate(tmp_path / "home", "--device", "device", str(path))
    assert by_device.returncode == 0, by_device.stdout + by_device.stderr
    assert "80 readings of 2 devices" in by_device.stdout

    pooled = evaluate(tmp_path / "home", "--one-device-per-file", str(path))
    assert pooled.returncode == 0, pooled.stdout + pooled.stderr
    assert "80 readings of 1 devices" in pooled.stdout

    both = evaluate(tmp_path / "home", "--one-device-per-file", "--device", "device", str(path))
    assert both.returncode == 1 and "not both" in both.stdout


def test_a_row_number_or_a_single_device_column_is_not_a_hidden_device(tmp_path):
    path = tmp_path / "one.csv"
    frame = readings().with_columns(pl.int_range(pl.len()).alias("id"))  # one device, ids 0..39
    frame.write_csv(path)
    done = evaluate(tmp_path / "home", "--features", "temperature", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "40 readings of 1 devices" in done.stdout


def test_services_status_exits_1_when_a_service_is_down(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEAD_", "DAGSTER_"))}
    env |= {
        **WIDE,
        "FLEAD_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "FLEAD_API_URL": f"http://127.0.0.1:{free_port()}",
        "FLEAD_TRAINER_HEALTH_PORT": str(free_port()),
        "FLEAD_MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
    }
    for command in (["services", "status"], ["local", "status"]):
        done = subprocess.run([FLEAD, *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
    assert done.stdout  # the table is still printed
    status = subprocess.run(
        [FLEAD, "services", "status"], env=env, capture_output=True, text=True, timeout=120
    )
    assert status.stdout.count("down") >= 2, status.stdout
