#!/bin/bash
# Submit the three ITKM stages as three SLURM jobs, each starting when the previous one succeeded.
#   CONFIG=conf/ums.yaml RUN_DIR=runs/ums conf/slurm/itkm_chain.sh [sbatch options, e.g. --nodes=2 --account=x]
# Your sbatch options go to every job (account, partition, QoS, time); Stage II trains only prompts (text
# side), so it is then given one node whatever --nodes says. A requeued stage job keeps its job id,
# so the afterok dependency of the next stage still holds.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export CONFIG=${CONFIG:-conf/ums.yaml}
export RUN_DIR=${RUN_DIR:-runs/$(basename "$CONFIG" .yaml)}

stage1=$(STAGE=stage1 sbatch --parsable --job-name=itkm-stage1 "$@" "$HERE/itkm_stage.sbatch")
stage2=$(STAGE=stage2 sbatch --parsable --job-name=itkm-stage2 "$@" --nodes=1 --dependency=afterok:"$stage1" \
    "$HERE/itkm_stage.sbatch")
stage3=$(STAGE=stage3 sbatch --parsable --job-name=itkm-stage3 --dependency=afterok:"$stage2" "$@" \
    "$HERE/itkm_stage.sbatch")
echo "submitted stage1=$stage1 stage2=$stage2 (after $stage1) stage3=$stage3 (after $stage2) -> $RUN_DIR"
