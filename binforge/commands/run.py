"""``binforge run --port DEV IMAGE``: classify one image on a board over its UART.

Sends the image with the host protocol (:mod:`binforge.boards.protocol`) and prints
the board's class, logits and cycle count. With ``--hw HW/`` the image's shape is
checked first and the board's answer is compared with the golden model's.
"""

from __future__ import annotations

import argparse
import time

from binforge.errors import BinforgeError
from binforge.outdir import atomic_output_dir, write_report

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from binforge.boards.build import DEFAULT_BAUD

    parser = subparsers.add_parser(
        "run",
        help="classify an image on a board over its serial port",
        description="Send one image to a board running a 'binforge build' bitstream and print "
        "its class, logits and accelerator cycles. IMAGE is a .png, a .npy (uint8) or NAME:INDEX "
        "(a data set item of the test split, e.g. fashion-mnist:7 or digits:0).",
    )
    parser.add_argument("image", metavar="IMAGE", help=".png, .npy or NAME:INDEX")
    parser.add_argument("--port", required=True, metavar="DEV", help="serial device, e.g. /dev/ttyUSB1")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"baud rate (default {DEFAULT_BAUD})")
    parser.add_argument("--hw", metavar="HW", help="the hardware folder the bitstream was built from: "
                        "checks the image shape and compares the answer with the golden model")
    parser.add_argument("--net", metavar="NET", help="the network, if hw.json does not name it")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply (default 5)")
    parser.add_argument("--out", metavar="DIR", help="also write DIR/report.json")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from binforge.boards.host import classify_over_serial, load_image, open_serial

    net = None
    if args.hw:
        from binforge.commands.build import load_hw_folder

        net = load_hw_folder(args.hw, args.net)[0]
    image, label, source = load_image(args.image, net.input_shape.as_tuple() if net else None)
    port = open_serial(args.port, args.baud)
    try:
        start = time.monotonic()
        reply = classify_over_serial(port, image, timeout=args.timeout)
        seconds = time.monotonic() - start
    finally:
        port.close()
    figures = {"image": source, "port": args.port, "baud": args.baud, "predicted": reply.predicted,
               "logits": list(reply.logits), "cycles": reply.cycles, "round_trip_seconds": round(seconds, 4)}
    if label is not None:
        figures["label"] = label
    names = net.classes if net is not None and net.classes else ()
    name = f" ({names[reply.predicted]})" if reply.predicted < len(names) else ""
    print(f"class      {reply.predicted}{name}" + (f", label {label}" if label is not None else ""))
    print(f"logits     {' '.join(str(v) for v in reply.logits)}")
    print(f"cycles     {reply.cycles} (accelerator), round trip {seconds * 1e3:.0f} ms over the UART")
    if net is not None:
        from binforge.sim.golden import run_network

        golden = run_network(net, image[None])
        agree = int(golden.predictions[0]) == reply.predicted and \
            tuple(int(v) for v in golden.logits[0]) == reply.logits
        figures["golden_predicted"] = int(golden.predictions[0])
        figures["agreement"] = agree
        print(f"golden     class {int(golden.predictions[0])}: "
              f"{'the board agrees bit-exactly' if agree else 'MISMATCH with the board'}")
    if args.out:
        with atomic_output_dir(args.out) as folder:
            write_report(folder, "run", **figures)
    if net is not None and not figures["agreement"]:
        raise BinforgeError("the board's answer differs from the golden model's; rebuild the bitstream "
                            "from this HW/ folder or check that the right one is loaded")
    return 0
