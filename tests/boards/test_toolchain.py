"""Running a build plan's tools in order: progress from nextpnr's log, a failing step named."""

import json
import os
import stat

import binforge.boards.toolchain as toolchain
import pytest

from binforge.errors import BinforgeError

ROUTER1 = "Info:     60000 |    22170      37829 |  308   692 |    140234|       2.36     224.34|"
ROUTER2 = "Info:     iter=9 wires=924546 overused=20007 overuse=20715 archfail=NA"


@pytest.mark.parametrize("line, status", [
    (ROUTER1, "routing, 140,234 arcs left"),
    (ROUTER2, "routing (router2 iteration 9), 20,007 wires overused"),
    ("Info:   at iteration #5: temp = 0.000000, timing cost = 1369, wirelen = 615295", "placing (iteration 5)"),
    ("Info:     at initial placer iter 3, wirelen = 14781", "placing (analytic, iteration 3)"),
    ("Info: Packing carries...", None),
])
def test_nextpnr_status_reads_the_last_progress_line(line, status):
    assert toolchain.nextpnr_status(f"Info: Packing IOs..\n{line}\nInfo: something else\n") == status


class FakePlan:
    script = "build_top"

    def __init__(self, commands):
        self.commands = commands

    def extract(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{self.script}.json"), "w") as f:
            json.dump({"commands": self.commands}, f)


def fake_tool(tmp_path, name, body):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_progress_comes_from_the_tools_log_and_a_failure_names_its_step(tmp_path, monkeypatch):
    place = fake_tool(tmp_path, "pnr", f"echo 'Info: at iteration #1: temp = 1' > \"$2\"\nsleep 0.3\n"
                                       f"echo '{ROUTER1}' >> \"$2\"\nsleep 0.3\n")
    monkeypatch.setenv("NEXTPNR_ICE40", place)
    monkeypatch.setenv("ICEPACK", fake_tool(tmp_path, "pack", "echo packing; exit 3\n"))
    monkeypatch.setattr(toolchain, "PROGRESS_POLL_SECONDS", 0.05)
    seen = []
    real = toolchain.nextpnr_status
    monkeypatch.setattr(toolchain, "nextpnr_status", lambda text: seen.append(real(text)) or seen[-1])
    plan = FakePlan([["nextpnr-ice40", "--log", "top.tim"], ["icepack", "top.asc"]])
    with pytest.raises(BinforgeError, match=r"bitstream \(icepack\) failed \(exit status 3\)") as info:
        toolchain.run_build_plan(plan, tmp_path / "build", progress=False)
    assert "packing" in str(info.value)  # the end of its log
    assert "placing (iteration 1)" in seen and "routing, 140,234 arcs left" in seen


@pytest.mark.parametrize("every,many", [(0.0, True), (100.0, False)])
def test_into_a_file_the_bar_is_written_at_most_every_log_interval(tmp_path, monkeypatch, capsys, every, many):
    place = fake_tool(tmp_path, "pnr", f"echo '{ROUTER1}' > \"$2\"\nsleep 0.4\n")
    monkeypatch.setenv("NEXTPNR_ICE40", place)
    monkeypatch.setattr(toolchain, "PROGRESS_POLL_SECONDS", 0.05)
    monkeypatch.setattr(toolchain, "LOG_PROGRESS_SECONDS", every)
    toolchain.run_build_plan(FakePlan([["nextpnr-ice40", "--log", "top.tim"]]), tmp_path / "build")
    err = capsys.readouterr().err  # not a terminal
    # polled about 8 times: every poll written, or only the step's end (the last status)
    assert (err.count("routing, 140,234 arcs left") >= 3) is many
    assert err.count("routing, 140,234 arcs left") >= 1 and "1/1" in err


def test_an_interrupted_build_stops_its_tool(tmp_path, monkeypatch):
    pid_file = tmp_path / "tool.pid"
    slow = fake_tool(tmp_path, "pnr", f"echo $$ > {pid_file}\nexec sleep 30\n")
    monkeypatch.setenv("NEXTPNR_ICE40", slow)
    monkeypatch.setattr(toolchain, "PROGRESS_POLL_SECONDS", 0.05)

    def interrupt(text):
        if pid_file.exists() and pid_file.read_text().strip():
            raise KeyboardInterrupt
        return None

    monkeypatch.setattr(toolchain, "nextpnr_status", interrupt)
    with pytest.raises(KeyboardInterrupt):
        toolchain.run_build_plan(FakePlan([["nextpnr-ice40", "--log", "top.tim"]]), tmp_path / "build",
                                 progress=False)  # fmt: skip
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


def test_sigterm_unwinds_a_command_and_removes_its_unfinished_output(tmp_path, monkeypatch, capsys):
    import argparse
    import signal

    import binforge.cli as cli
    from binforge.outdir import atomic_output_dir

    def run(args):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("half-written")
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")

    def parser():
        p = argparse.ArgumentParser(prog="binforge")
        p.set_defaults(run=run)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main([]) == 143
    assert "binforge: terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary
    assert signal.getsignal(signal.SIGTERM) is before


def test_main_outside_the_main_thread_leaves_signals_alone(monkeypatch):
    import argparse
    import threading

    import binforge.cli as cli

    def parser():
        p = argparse.ArgumentParser(prog="binforge")
        p.set_defaults(run=lambda args: 7)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    result = []
    thread = threading.Thread(target=lambda: result.append(cli.main([])))
    thread.start()
    thread.join()
    assert result == [7]
