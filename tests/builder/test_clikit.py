"""builder/clikit.py: errors become messages and exit codes; console scripts end fast but clean.

``run_and_exit`` ends the process with ``os._exit``, so it is tested in child processes: the
exit code is the command's, the atexit handlers ran, and buffered output reached the pipe.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from builder.clikit import handle_errors, note_for_errors, process_ends_after_command
from builder.errors import RecipeError

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    import click
    from builder.clikit import handle_errors, run_and_exit
    from builder.errors import RecipeError

    marker = sys.argv[1]
    atexit.register(lambda: open(marker, "w").write("atexit ran"))

    @click.command()
    @click.argument("marker")
    @click.argument("how")
    @handle_errors
    def cmd(marker, how):
        sys.stdout.write("unflushed output")  # no newline, no flush: must still arrive
        if how == "recipe":
            raise RecipeError("model.dtype: 'f8' is not a dtype; use float32 or bfloat16")
        if how == "exit3":
            sys.exit(3)
        if how == "message":
            sys.exit("plain message")

    run_and_exit(cmd)
    """
)


@pytest.mark.parametrize(
    ("how", "code", "stderr"),
    [
        ("ok", 0, ""),
        ("exit3", 3, ""),
        ("message", 1, "plain message\n"),
        (
            "recipe",
            2,
            "error: model.dtype: 'f8' is not a dtype; use float32 or bfloat16\n",
        ),
    ],
)
def test_run_and_exit_keeps_code_output_and_exit_handlers(
    tmp_path: Path, how: str, code: int, stderr: str
) -> None:
    marker = tmp_path / "marker.txt"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker), how],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "unflushed output"
    assert proc.stderr == stderr
    assert marker.read_text() == "atexit ran"


def test_only_a_command_run_and_exit_started_is_told_the_process_ends_after_it() -> None:
    script = textwrap.dedent(
        """
        import click
        from builder.clikit import process_ends_after_command, run_and_exit

        @click.command()
        def cmd():
            print(f"inside: {process_ends_after_command()}")

        print(f"before: {process_ends_after_command()}")
        run_and_exit(cmd)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "before: False\ninside: True\n"

    @click.command()
    def cmd() -> None:
        click.echo(f"inside: {process_ends_after_command()}")

    assert CliRunner().invoke(cmd, []).output == "inside: False\n"  # tests go on after it


def test_handle_errors_maps_our_errors_to_exit_2_without_traceback() -> None:
    @click.command()
    @handle_errors
    def cmd() -> None:
        raise RecipeError("sampling.seed: 'x' is not an integer; write a whole number")

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 2
    assert result.output == "error: sampling.seed: 'x' is not an integer; write a whole number\n"
    assert "Traceback" not in result.output


def test_handle_errors_ctrl_c_exits_130_with_the_resume_hint() -> None:
    @click.command()
    @click.option("--note", is_flag=True)
    @handle_errors
    def cmd(note: bool) -> None:
        if note:
            note_for_errors(interrupted="interrupted: resume with: upft-build r.yaml")
        raise KeyboardInterrupt

    noted = CliRunner().invoke(cmd, ["--note"])
    assert (noted.exit_code, noted.output) == (130, "interrupted: resume with: upft-build r.yaml\n")
    # The note belonged to that invocation: the next one says the general hint.
    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 130
    assert result.output == "interrupted: completed shards are kept; re-run to resume\n"


def test_a_disk_error_names_the_noted_output_folder() -> None:
    import errno

    @click.command()
    @handle_errors
    def cmd() -> None:
        note_for_errors(output="out/demo-upft")
        raise OSError(errno.ENOSPC, "No space left on device")

    result = CliRunner().invoke(cmd, [])
    assert result.exit_code == 2
    assert result.output.startswith(
        "error: cannot write out/demo-upft: No space left on device; free some space"
    )


def test_the_private_exit_hook_run_and_exit_relies_on_exists() -> None:
    """run_and_exit calls ``atexit._run_exitfuncs`` (no public equivalent; the module docstring
    says why it is kept): an upgrade that renames or drops it must fail here, in the fast suite,
    rather than every console script at its end. (It is not called here: it would run the
    test session's own exit handlers; the subprocess tests above run it.)"""
    import atexit

    assert callable(getattr(atexit, "_run_exitfuncs", None))
