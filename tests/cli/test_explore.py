"""``binforge explore``: the points table, resuming, Pareto fronts, validation, builds, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from binforge.boards.build import binary_conv_layers
from binforge.boards.fit import estimate_fit
from binforge.boards.platforms import get_board
from binforge.compiler.ir import Shape, save
from binforge.compiler.random_network import random_network
from binforge.hw.plan import DEFAULT_RELAY, analytic_cycles, plan_network, skew_advice
from binforge.model.data import load_dataset
from binforge.sim.golden import run_network

import binforge.explore as explore
from binforge.cli import main

DATA = "synthetic=1,8,8,4"
LIMIT = 48


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Two small compiled networks in NET folders: a multi-op one and a one-op-per-layer one."""
    root = tmp_path_factory.mktemp("nets")
    networks = {
        "multi": random_network(0),
        "single": random_network(1, channels=(6, 8), act_planes=(1, 1), first_weight_planes=1),
    }
    for name, net in networks.items():
        save(net, root / name)
    return root, networks


def read_points(folder):
    with open(folder / "points.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def sweep(nets, out, *extra):
    root, _ = nets
    return main(["explore", "--net", str(root / "multi"), "--net", str(root / "single"),
                 "--rows", "2,4", "--cols", "1,2", "--simd", "8,16", "--boards", "icebreaker,ulx3s-85f",
                 "--data", DATA, "--limit", str(LIMIT), "--out", str(out), *extra])


def test_sweep_writes_every_point_with_its_figures_and_the_plots(nets, tmp_path, capsys):
    root, networks = nets
    out = tmp_path / "exp"
    assert sweep(nets, out) == 0
    columns, rows = read_points(out)
    assert tuple(columns) == explore.POINT_COLUMNS
    assert len(rows) == 2 * 8 * 2
    keys = {tuple(r[c] for c in explore.KEY_COLUMNS) for r in rows}
    assert len(keys) == len(rows)

    data = load_dataset(DATA, "test", limit=LIMIT)
    accuracies = {name: 100.0 * np.mean(run_network(net, data.images).predictions == data.labels)
                  for name, net in networks.items()}
    plans = {}
    for row in rows:
        net = networks[row["network"]]
        r, c, s = int(row["rows"]), int(row["cols"]), int(row["simd"])
        board = get_board(row["board"])
        plan = plans.setdefault((row["network"], r, c, s), plan_network(net, r, c, s))
        assert skew_advice(plan) is None and int(row["relay"]) == DEFAULT_RELAY  # small arrays: no skew to take out
        estimate = estimate_fit(plan, board)
        assert int(row["cycles"]) == analytic_cycles(plan)["total"]
        assert int(row["logic"]) == int(row["logic_estimate"]) == estimate.logic_cells
        assert int(row["bram_blocks"]) == estimate.bram_blocks
        assert row["fits"] == ("yes" if estimate.fits else "no")
        assert row["resources_from"] == "estimate" and row["fmax_from"] == "estimate"
        assert row["validated"] == "no" and row["built"] == "no" and row["error"] == ""
        assert float(row["accuracy"]) == pytest.approx(accuracies[row["network"]], abs=0.005)
        assert int(row["bit_ops"]) == explore.bit_ops(net) > 0
        assert row["ops_per_layer"].split() == [str(len(layer.ops)) for layer in net.compute_layers]
        per_image = int(row["image_cycles"])
        assert float(row["images_per_s"]) == pytest.approx(board.clock_hz / per_image, rel=1e-3)
        fmax = float(row["fmax_mhz"])
        assert float(row["images_per_s_at_fmax"]) == pytest.approx(fmax * 1e6 / per_image, rel=1e-3)
    # more rows (output channels in parallel) never costs cycles here
    multi = {(r["rows"], r["cols"], r["simd"]): int(r["cycles"]) for r in rows
             if r["network"] == "multi" and r["board"] == "icebreaker"}
    assert multi[("4", "1", "8")] < multi[("2", "1", "8")]

    for name in explore.PLOT_FILES:
        data_png = (out / name).read_bytes()
        assert data_png[:8] == b"\x89PNG\r\n\x1a\n" and len(data_png) > 5000
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "explore"
    assert (report["points"], report["computed"], report["resumed"]) == (32, 32, 0)
    assert report["fitting"] == sum(r["fits"] == "yes" for r in rows)
    assert report["pareto_front"], "a sweep with fitting points has a Pareto front"
    summary = capsys.readouterr().out
    assert "32 points (32 computed, 0 resumed)" in summary


def test_resume_skips_finished_points(nets, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    plans, goldens = [], []
    real_plan, real_golden = explore.plan_network, explore.golden_accuracy

    def counting_plan(net, rows, cols, simd, *args, **kwargs):
        plans.append((net.name, rows, cols, simd))
        if len(plans) == 5 and interrupt:
            raise KeyboardInterrupt  # the sweep is stopped half way
        return real_plan(net, rows, cols, simd, *args, **kwargs)

    def counting_golden(net, images, labels):
        goldens.append(net.name)
        return real_golden(net, images, labels)

    monkeypatch.setattr(explore, "plan_network", counting_plan)
    monkeypatch.setattr(explore, "golden_accuracy", counting_golden)
    interrupt = True
    assert sweep(nets, out) == 130
    _, first = read_points(out)
    assert len(first) == 4 * 2  # four shapes were finished, two boards each
    assert len(goldens) == 1

    interrupt = False
    plans.clear()
    goldens.clear()
    assert sweep(nets, out) == 0
    assert len(plans) == 16 - 4  # only the shapes not in points.csv
    assert len(goldens) == 1  # the first network's accuracy came from the table
    _, second = read_points(out)
    assert len(second) == 32
    assert [r for r in second if r in first] == first  # finished rows kept as they were
    report = json.loads((out / "report.json").read_text())
    assert (report["computed"], report["resumed"]) == (24, 8)

    plans.clear()
    goldens.clear()
    assert sweep(nets, out) == 0
    assert plans == [] and goldens == []
    assert read_points(out)[1] == second

    # another cycle or fit model (its source changed): every point is estimated again,
    # the measured accuracy is kept
    monkeypatch.setattr(explore, "models_digest", lambda: "other-models")
    assert sweep(nets, out) == 0
    assert len(plans) == 16 and goldens == []
    _, third = read_points(out)
    assert len(third) == 64 and sum(r["models"] == "other-models" for r in third) == 32


def test_pareto_front_on_a_hand_built_set():
    points = [(1, 5), (2, 2), (5, 1), (3, 3), (2, 2), (6, 6), (1, 6), (5, 2)]
    # (3,3), (6,6) are dominated by (2,2); (1,6) by (1,5); (5,2) by (5,1); equal points both stay
    assert explore.pareto_front(points) == [0, 1, 2, 4]
    assert explore.pareto_front([(3, 1, 2), (3, 1, 1), (1, 9, 9)]) == [1, 2]
    assert explore.pareto_front([]) == []

    def row(board, cycles, logic, fits="yes", **extra):
        return {"net_hash": "n", "data": "", "rows": str(cycles), "cols": "1", "simd": "8", "board": board,
                "cycles": str(cycles), "logic": str(logic), "fits": fits, "error": "", **extra}

    def rows_and_boards(keys):
        index = explore.KEY_COLUMNS.index
        return {(k[index("rows")], k[index("board")]) for k in keys}

    rows = [row("a", 100, 10), row("a", 50, 20), row("a", 60, 30), row("a", 10, 5, fits="no"),
            row("b", 70, 20), row("b", 80, 10)]
    # per board, fitting points only: a's (10, 5) does not fit, (60, 30) is dominated
    assert rows_and_boards(explore.front_keys(rows)) == {("100", "a"), ("50", "a"), ("70", "b"), ("80", "b")}

    # with accuracy, a slower and bigger point of a more accurate network stays on the front
    rows = [row("a", 100, 10, network="n1", accuracy="90"), row("a", 50, 20, network="n1", accuracy="90"),
            row("a", 60, 30, network="n2", accuracy="95"), row("a", 70, 40, network="n2", accuracy="95")]
    assert rows_and_boards(explore.front_keys(rows)) == {("100", "a"), ("50", "a"), ("60", "a")}
    assert rows_and_boards(explore.front_keys(rows, with_accuracy=False)) == {("100", "a"), ("50", "a")}
    assert rows_and_boards(explore.front_keys(rows, per_network=True, with_accuracy=False)) == {
        ("100", "a"), ("50", "a"), ("60", "a")}


def test_networks_get_unique_labels_and_duplicates_are_kept_once(nets, tmp_path):
    root, networks = nets
    save(networks["multi"], tmp_path / "copy" / "multi")  # same numbers, same folder name
    save(networks["single"], tmp_path / "other" / "multi")  # other numbers, same folder name
    loaded = explore.load_networks(nets=[root / "multi", tmp_path / "copy" / "multi",
                                         tmp_path / "other" / "multi"])
    assert [n.label for n in loaded] == ["multi", "multi-2"]
    assert [n.digest for n in loaded] == [explore.network_digest(networks["multi"]),
                                          explore.network_digest(networks["single"])]


def test_points_where_skew_sets_the_pace_take_the_relay_that_removes_it(nets):
    _, networks = nets
    network = explore.SweepNetwork("single", "memory", networks["single"])
    (row,) = explore.evaluate_shape(network, 8, 48, 8, [get_board("ulx3s-85f")])
    advice = skew_advice(plan_network(networks["single"], 8, 48, 8))
    assert advice is not None and advice["hint"] > DEFAULT_RELAY
    assert int(row["relay"]) == advice["hint"] and int(row["cycles"]) == advice["hint_cycles"]
    plan = plan_network(networks["single"], 8, 48, 8, relay=advice["hint"])
    conv = binary_conv_layers(plan.net, {layer["name"]: layer["cycles"] for layer in analytic_cycles(plan)["layers"]})
    logic = estimate_fit(plan, get_board("ulx3s-85f")).logic_cells
    assert float(row["conv_ops_per_logic"]) == pytest.approx(conv["binary_ops"] / conv["cycles"] / logic, abs=1e-4)


def test_a_point_is_built_at_its_relay(nets, tmp_path, monkeypatch):
    import binforge.boards.build as board_build

    calls = []
    monkeypatch.setattr(board_build, "build_for_board", lambda *args, **kwargs: calls.append((args, kwargs)) or {})
    _, networks = nets
    row = {"rows": "8", "cols": "48", "simd": "8", "board": "ulx3s-85f", "relay": "8", "network": "single",
           "net_hash": "h"}
    explore.build_point(networks["single"], row, tmp_path / "b", progress=False)
    explore.build_point(networks["single"], {**row, "relay": ""}, tmp_path / "c", progress=False)  # older table
    assert [kwargs["relay"] for _, kwargs in calls] == [8, DEFAULT_RELAY]
    assert calls[0][0][1:5] == (8, 48, 8, "ulx3s-85f")


def test_validate_checks_cycles_and_logits_in_simulation(tmp_path):
    net = random_network(4, in_shape=Shape(1, 4, 4), channels=(2,), num_classes=2, pool=False,
                         first_weight_planes=1)
    save(net, tmp_path / "tiny")
    out = tmp_path / "exp"
    assert main(["explore", "--net", str(tmp_path / "tiny"), "--rows", "1,2", "--cols", "1", "--simd", "4",
                 "--boards", "icebreaker,ulx3s-85f", "--validate", "1", "--out", str(out)]) == 0
    _, rows = read_points(out)
    validated = [r for r in rows if r["validated"] == "yes"]
    assert len(validated) == 2 and len({(r["rows"], r["cols"], r["simd"]) for r in validated}) == 1
    for r in validated:
        assert r["sim_cycles"] == r["cycles"]
        assert r["sim_image_cycles"] == r["image_cycles"]
    assert all(r["sim_cycles"] == "" for r in rows if r["validated"] == "no")
    report = json.loads((out / "report.json").read_text())
    assert [v["passed"] for v in report["validated"]] == [True]
    assert report["data"] is None and all(r["accuracy"] == "" for r in rows)


def test_build_takes_pareto_points_first_and_records_built_figures(nets, tmp_path, monkeypatch):
    # The FPGA flow itself is tested in tests/boards; here it is replaced by a recorder so the
    # explorer's choice of points and its bookkeeping are checked in seconds.
    root, _ = nets
    built = []

    def recording_build(net, row, out, *, progress=True):
        built.append(dict(row))
        return {"utilisation": {"logic_cells": {"used": 1234}, "bram": {"used": 3}}, "fmax_sync_mhz": 50.0}

    monkeypatch.setattr(explore, "build_point", recording_build)
    out = tmp_path / "exp"
    args = ["explore", "--net", str(root / "single"), "--rows", "2,4", "--cols", "1,2", "--simd", "8",
            "--boards", "icebreaker", "--build", "1", "--out", str(out)]
    assert main(args) == 0
    assert len(built) == 1
    _, rows = read_points(out)
    before = {tuple(r[c] for c in explore.KEY_COLUMNS): r for r in rows}
    front = explore.front_keys([{**r, "logic": r["logic_estimate"]} for r in rows])
    assert tuple(built[0][c] for c in explore.KEY_COLUMNS) in front
    (done,) = [r for r in rows if r["built"] == "yes"]
    assert (done["resources_from"], done["logic"], done["bram_blocks"]) == ("built", "1234", "3")
    assert done["logic_estimate"] == built[0]["logic_estimate"] != "1234"
    assert (done["fmax_from"], done["fmax_mhz"]) == ("built", "50.0")
    assert float(done["images_per_s_at_fmax"]) == pytest.approx(50e6 / int(done["image_cycles"]), rel=1e-3)
    assert main(args) == 0  # resumed: the built point counts, nothing is built again
    assert len(built) == 1
    assert {tuple(r[c] for c in explore.KEY_COLUMNS): r for r in read_points(out)[1]} == before


@pytest.mark.parametrize("args, message", [
    (["--net", "{tmp}/missing"], "the network folder {tmp}/missing does not exist"),
    (["--net", "{net}", "--rows", "0"], "--rows must be a comma-separated list of positive integers"),
    (["--net", "{net}", "--cols", "2,x"], "--cols must be a comma-separated list of positive integers"),
    (["--net", "{net}", "--simd", "12"], "--simd must be a comma-separated list of powers of two"),
    (["--net", "{net}", "--boards", "nexys"], "unknown board 'nexys'"),
    ([], "no network to explore"),
    (["--net", "{net}", "--data", "synthetic=1,8,8,10"], "has 4 classes but --data synthetic=1,8,8,10 has labels up to 9"),
    (["--runs", "{tmp}/norun"], "the run folder {tmp}/norun does not exist"),
    (["--runs", "{net}"], "{net} is a compiled network, not a training run; give it with --net"),
])
def test_bad_input_exits_2_with_one_clear_sentence(nets, tmp_path, capsys, args, message):
    root, _ = nets
    fill = {"tmp": str(tmp_path), "net": str(root / "multi")}
    argv = ["explore", *[a.format(**fill) for a in args], "--out", str(tmp_path / "exp")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err
    assert err.startswith("binforge: error: ") and err.count("\n") == 1
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_build_really_builds_the_pareto_point_for_the_icebreaker(tmp_path):
    net = random_network(4, in_shape=Shape(1, 4, 4), channels=(2,), num_classes=2, pool=False,
                         first_weight_planes=1)
    save(net, tmp_path / "tiny")
    out = tmp_path / "exp"
    assert main(["explore", "--net", str(tmp_path / "tiny"), "--rows", "1,2", "--cols", "1", "--simd", "4",
                 "--boards", "icebreaker", "--build", "1", "--out", str(out)]) == 0
    _, rows = read_points(out)
    (done,) = [r for r in rows if r["built"] == "yes"]
    assert done["resources_from"] == "built" and done["fmax_from"] == "built"
    assert 0 < int(done["logic"]) <= 5280 and float(done["fmax_mhz"]) > 12.0
    report = json.loads((out / done["build_dir"] / "report.json").read_text())
    assert report["built"] is True and (out / done["build_dir"] / report["bitstream"]).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.sim
def test_validate_with_verilator_runs_the_generated_verilog(nets, tmp_path):
    root, networks = nets
    out = tmp_path / "exp"
    code = main(["explore", "--net", str(root / "multi"), "--rows", "4", "--cols", "2", "--simd", "16",
                 "--boards", "ulx3s-85f", "--data", DATA, "--limit", "4", "--validate", "1",
                 "--simulator", "verilator", "--out", str(out)])
    (row,) = read_points(out)[1]
    assert (row["simulator"], row["sim_images"]) == ("verilator", "4")
    assert row["sim_cycles"] == row["cycles"] == str(analytic_cycles(networks["multi"], 4, 2, 16)["total"])
    assert row["validated"] == "yes" and code == 0
    assert (out / "validate" / "multi-4x2x16" / "hw" / "binforge_top.v").is_file()
