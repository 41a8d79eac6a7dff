#!/usr/bin/env bash
# PaBT seeds on a lent machine that has torch but not binforge, in one call.
#
# usage, on this machine (PyPI reachable), once:
#   experiments/device_seeds.sh prepare DIR
#     DIR gets wheels/ (binforge from this checkout, and the pure-Python packages that
#     training imports besides torch, numpy and tqdm: amaranth, amaranth-boards and
#     theirs) and fashion-mnist/ (the four IDX .gz files from FASHION_MNIST, default
#     Debian's /usr/share/datasets/fashion-mnist). Keep DIR inside the checkout, ignored
#     by git, and carry it to the machine (about 32 MB).
# usage, on the lent machine (its repository root, OUT the folder that comes back):
#   experiments/device_seeds.sh run DIR WORK SECONDS SEED...
#     installs the wheels into WORK/site, then runs
#     experiments/pabt_fashion_seeds.sh WORK/float5_w<WIDTH> WORK/runs cuda SECONDS SEED...
#     (the float twin first where WORK has none) with PACK=$OUT: each run comes back as
#     one .tgz without its checkpoint. WORK stays on the machine's disk (not under
#     $OUT), so a call stopped by SECONDS resumes every run with the same command while
#     the machine is still held. WIDTH (default 1.0), EPOCHS, DEVICE (cuda) as in
#     pabt_fashion_seeds.sh. Progress every 60 s: each run's last line, GPU use.
# then, here: unpack the .tgz files under out/kd/ and run
#   experiments/pabt_seeds_summary.py --out out/kd/seeds_w1 --float out/kd/float5_w1.0 out/kd/pabt_kd20s*
set -u
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-}
case $mode in
prepare)
    [ $# -eq 2 ] || { sed -n 4,10p "$0" >&2; exit 2; }
    dir=$2
    python=${PYTHON:-python3}
    src=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
    mkdir -p "$dir/wheels" "$dir/fashion-mnist" || exit 1
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        if [ -f "$src/$f.gz" ]; then
            cp "$src/$f.gz" "$dir/fashion-mnist/"
        elif [ -f "$src/$f" ]; then
            gzip -c "$src/$f" >"$dir/fashion-mnist/$f.gz"
        else
            echo "no $f(.gz) in $src: set FASHION_MNIST to the folder of the IDX files" >&2
            exit 1
        fi
    done
    "$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir/wheels" "$here/.." || exit 1
    "$python" -m pip download -q --no-deps -d "$dir/wheels" amaranth==0.5.10 amaranth-boards==0.0.21 \
        jschon==0.11.1 pyvcd==0.4.2 rfc3986==2.0.0 || exit 1
    du -sh "$dir"
    ;;
run)
    [ $# -ge 5 ] || { sed -n 11,20p "$0" >&2; exit 2; }
    dir=$2 work=$3 seconds=$4
    shift 4
    : "${OUT:?OUT must name the folder that is sent back}"
    start=$(date +%s)
    width=${WIDTH:-1.0}
    mkdir -p "$work" || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" \
        "$dir"/wheels/*.whl || exit 1
    export PYTHONPATH=$work/site PYTHONSAFEPATH=1 BINFORGE="python3 -m binforge" \
        FASHION_MNIST=$(cd "$dir/fashion-mnist" && pwd) WIDTH=$width PACK=$OUT
    python3 -c "import torch, binforge; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
    ( while sleep 60; do
        echo "$(( $(date +%s) - start )) s: $(for f in "$work"/runs/*.log; do [ -f "$f" ] && tail -c 300 "$f" | tr '\r' '\n' | grep -v '^$' | tail -1 | cut -c1-100; done | tr '\n' '|')"
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
      done ) &
    monitor=$!
    bash "$here/pabt_fashion_seeds.sh" "$work/float5_w$width" "$work/runs" "${DEVICE:-cuda}" "$seconds" "$@"
    status=$?
    kill "$monitor" 2>/dev/null
    echo "total $(( $(date +%s) - start )) s; sent back: $(cd "$OUT" && ls | tr '\n' ' ')"
    exit $status
    ;;
*)
    sed -n 2,23p "$0" >&2
    exit 2
    ;;
esac
