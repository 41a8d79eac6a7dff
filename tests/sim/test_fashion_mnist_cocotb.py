"""Real Fashion-MNIST images through a trained, compiled network on Verilator (slow):
train briefly, compile, generate the hardware, then ``binforge sim`` 100 test images with
random stalls; every class and logit must equal the golden model's, simulated within
5 minutes (the first Verilator build of the design, a few minutes more, is not counted)."""

import json
import time

import pytest
from binforge.model.data import FASHION_MNIST_DIR

from binforge.cli import main

pytestmark = [pytest.mark.sim, pytest.mark.slow]

IMAGES = 100


@pytest.fixture(scope="module")
def fashion_hw(tmp_path_factory):
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: sudo apt-get install -y dataset-fashion-mnist")
    root = tmp_path_factory.mktemp("fashion")
    run, net, hw = root / "run", root / "net", root / "hw"
    assert main(["train", "--data", "fashion-mnist", "--arch", "mlp", "--width", "0.125", "--method", "ste",
                 "--epochs", "1", "--float-epochs", "1", "--limit-train", "20000", "--limit-test", "500",
                 "--seed", "0", "--out", str(run)]) == 0
    assert main(["compile", str(run), "--out", str(net)]) == 0
    assert main(["hw", str(net), "--rows", "16", "--cols", "1", "--simd", "32", "--out", str(hw)]) == 0
    return net, hw


def test_hundred_fashion_mnist_images_bit_exact_on_verilator(fashion_hw, build_root, tmp_path, record_cases):
    net, hw = fashion_hw
    out = tmp_path / "sim"
    start = time.perf_counter()
    rc = main(["sim", str(hw), "--net", str(net), "--simulator", "verilator", "--data", "fashion-mnist",
               "--split", "test", "--limit", str(IMAGES), "--stall", "0.1", "--chunk", "50",
               "--build-root", str(build_root), "--out", str(out)])
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    record_cases(report["cases"], report["mismatch_count"])
    assert rc == 0, report["mismatches"][:5]
    assert report["images"] == report["matches"] == IMAGES
    assert report["rtl_cycles_min"] == report["rtl_cycles_max"] == report["analytic_cycles"]
    assert all(row["rtl_min"] == row["rtl_max"] == row["analytic"] for row in report["layer_cycles"])
    (tmp_path.parent / "fashion_sim_report.json").write_text(json.dumps(report, indent=1))
    assert report["rtl_accuracy"] > 0.5  # a trained network, not chance (10 classes)
    # The target is the simulation; the one-time Verilator build of this design is reused later.
    assert report["sim_seconds"] < 300, f"{IMAGES} images took {report['sim_seconds']:.0f} s to simulate"
    assert seconds < 300 + report["build_seconds"]
