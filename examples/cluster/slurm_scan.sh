#!/usr/bin/env bash
# A partitioned scan as a Slurm job array: each array task scans every N-th snapshot, and a
# last job, which waits for the whole array, merges the parts into one ranking.
#
#   sbatch --array=0-3 examples/cluster/slurm_scan.sh /data/pythia-160m /data/task.jsonl /scratch/scan
#   sbatch --dependency=afterok:<array job id> --wrap \
#     'plasticity merge /scratch/scan/part-*.json --json /scratch/scan/all.json --markdown /scratch/scan/all.md'
#
# --partition auto reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT,
# so the array's size is the number of parts. Every task must use the same flags: merge refuses
# parts whose settings differ (the thread count apart). A task that is requeued or cut short
# continues where it stopped with --resume on its own part.
#SBATCH --job-name=plasticity
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=plasticity-%A_%a.log
set -euo pipefail
series=$1 task=$2 out=$3
mkdir -p "$out"
part="$out/part-${SLURM_ARRAY_TASK_ID}.json"
resume=()
[ -f "$part" ] && resume=(--resume "$part")
plasticity scan "$series" --task "$task" --partition auto --threads "${SLURM_CPUS_PER_TASK:-8}" \
  --json "$part" --quiet "${resume[@]}"
