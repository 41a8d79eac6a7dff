#!/usr/bin/env bash
# PaBT-I with distillation on Fashion-MNIST (the 20-binary-epoch recipe of
# docs/RESULTS.md, "20 binary epochs"), several seeds at once on one machine:
# one process per seed, all on the same device, each with its own CPU threads.
#
# usage: experiments/pabt_fashion_seeds.sh TEACHER OUT DEVICE SECONDS SEED...
#   TEACHER  the float twin (a `binforge train --method float` run folder): the
#            initialisation and the distillation teacher; trained first (5 epochs,
#            seed 0, on DEVICE) when the folder holds no model.pt
#   OUT      runs go to OUT/pabt_kd<EPOCHS>s<SEED>, their logs to OUT/pabt_kd<EPOCHS>s<SEED>.log
#   DEVICE   cpu, cuda or auto (binforge train --device)
#   SECONDS  wall-clock limit per run; a run stopped by it keeps its last
#            per-epoch checkpoint: the same command continues it (--resume)
#   SEED...  one run per seed
#
# Environment: BINFORGE (default: binforge) the command that runs binforge;
# FASHION_MNIST (default: Debian's /usr/share/datasets/fashion-mnist) the IDX files;
# THREADS the CPU threads per run (default: cores / seeds); WIDTH (0.5), EPOCHS (20),
# ARCH (vgg-small), DATA (fashion-mnist=$FASHION_MNIST), EXTRA (more train options,
# e.g. "--limit-train 1024") change the recipe. PACK=DIR: at the end, each run (and the
# float twin) also goes to DIR as one .tgz of its folder and log without checkpoint.pt
# (what a machine that is handed back must send home; an unfinished run's log too).
set -u
if [ $# -lt 5 ]; then
    sed -n 6,22p "$0" >&2
    exit 2
fi
teacher=$1 out=$2 device=$3 seconds=$4
shift 4
binforge=${BINFORGE:-binforge}
data=${DATA:-fashion-mnist=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}}
threads=${THREADS:-$(( $(nproc) / $# ))}
[ "$threads" -ge 1 ] || threads=1
width=${WIDTH:-0.5} epochs=${EPOCHS:-20} arch=${ARCH:-vgg-small}
read -r -a extra <<<"${EXTRA:-}"
common=(--data "$data" --arch "$arch" --width "$width" --batch-size 64 --lr 1e-3
        --device "$device" "${extra[@]}")
mkdir -p "$out"
if [ ! -f "$teacher/model.pt" ]; then
    echo "training the float twin into $teacher"
    resume=()
    [ -f "$teacher/checkpoint.pt" ] && resume=(--resume)
    OMP_NUM_THREADS=$(nproc) PYTHONUNBUFFERED=1 timeout "$seconds" $binforge train \
        "${common[@]}" --method float --epochs 5 --seed 0 "${resume[@]}" --out "$teacher" \
        >>"$teacher.log" 2>&1
    if [ ! -f "$teacher/model.pt" ]; then
        echo "the float twin did not finish (log: $teacher.log); run the same command again" >&2
        tail -n 3 "$teacher.log" >&2
        exit 1
    fi
fi
pids=()
for seed in "$@"; do
    run=$out/pabt_kd${epochs}s$seed
    resume=()
    [ -f "$run/checkpoint.pt" ] && resume=(--resume)
    OMP_NUM_THREADS=$threads PYTHONUNBUFFERED=1 timeout "$seconds" $binforge train \
        "${common[@]}" --method pabt --M 3 --N 3 --init "$teacher" --epochs "$epochs" \
        --seed "$seed" --t-start 5% --t-end 20% --distill "$teacher" --distill-weight 1 \
        --distill-temperature 1 "${resume[@]}" --out "$run" \
        2>&1 | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done \
        >>"$run.log" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
status=0
for seed in "$@"; do
    run=$out/pabt_kd${epochs}s$seed
    if [ -f "$run/report.json" ]; then
        echo "seed $seed: finished ($run)"
    else
        echo "seed $seed: not finished; run the same command again to continue it"
        status=1
    fi
    tail -n 3 "$run.log"
done
if [ -n "${PACK:-}" ]; then
    mkdir -p "$PACK"
    for dir in "$teacher" "${@/#/$out/pabt_kd${epochs}s}"; do
        parent=$(dirname "$dir") name=$(basename "$dir")
        items=()
        [ -d "$dir" ] && items+=("$name")
        [ -f "$dir.log" ] && items+=("$name.log")
        [ ${#items[@]} -gt 0 ] && tar czf "$PACK/$name.tgz" -C "$parent" --exclude checkpoint.pt "${items[@]}"
    done
    echo "packed into $PACK: $(cd "$PACK" && ls -- *.tgz | tr '\n' ' ')"
fi
exit $status
