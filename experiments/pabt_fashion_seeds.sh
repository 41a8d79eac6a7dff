#!/usr/bin/env bash
# PaBT-I with distillation on Fashion-MNIST (the 20-binary-epoch recipe of
# docs/RESULTS.md, "20 binary epochs"), several seeds at once on one machine:
# one process per seed, all on the same device, each with its own CPU threads.
#
# usage: experiments/pabt_fashion_seeds.sh TEACHER OUT DEVICE SECONDS SEED...
#   TEACHER  the float twin (a `binforge train --method float` run folder): the
#            initialisation and the distillation teacher
#   OUT      runs go to OUT/pabt_kd20s<SEED>, their logs to OUT/pabt_kd20s<SEED>.log
#   DEVICE   cpu, cuda or auto (binforge train --device)
#   SECONDS  wall-clock limit per run; a run stopped by it keeps its last
#            per-epoch checkpoint: continue it with the same command plus --resume
#   SEED...  one run per seed
#
# Environment: BINFORGE (default: binforge) is the command that runs binforge;
# FASHION_MNIST (default: Debian's /usr/share/datasets/fashion-mnist) the IDX files;
# THREADS the CPU threads per run (default: cores / seeds).
set -u
if [ $# -lt 5 ]; then
    sed -n 6,17p "$0" >&2
    exit 2
fi
teacher=$1 out=$2 device=$3 seconds=$4
shift 4
binforge=${BINFORGE:-binforge}
data=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
threads=${THREADS:-$(( $(nproc) / $# ))}
[ "$threads" -ge 1 ] || threads=1
mkdir -p "$out"
pids=()
for seed in "$@"; do
    run=$out/pabt_kd20s$seed
    resume=()
    [ -f "$run/checkpoint.pt" ] && resume=(--resume)
    OMP_NUM_THREADS=$threads PYTHONUNBUFFERED=1 timeout "$seconds" $binforge train \
        --data "fashion-mnist=$data" --arch vgg-small --width 0.5 --method pabt \
        --M 3 --N 3 --init "$teacher" --epochs 20 --batch-size 64 --lr 1e-3 --seed "$seed" \
        --t-start 5% --t-end 20% --distill "$teacher" --distill-weight 1 \
        --distill-temperature 1 --device "$device" "${resume[@]}" --out "$run" \
        2>&1 | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done \
        >>"$run.log" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
for seed in "$@"; do
    run=$out/pabt_kd20s$seed
    if [ -f "$run/report.json" ]; then
        echo "seed $seed: finished"
    else
        echo "seed $seed: not finished; continue with the same command (it resumes)"
        status=1
    fi
    tail -n 3 "$run.log"
done
exit $status
