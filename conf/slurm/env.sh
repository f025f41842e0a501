# Sourced by conf/slurm/itkm_all.sbatch and itkm_stage.sbatch before `srun itkm fit`: activate the environment
# that has `itkm` installed. This is the one place to edit; uncomment what your cluster uses.
# module load cuda/12.4
# source ~/venvs/itkm/bin/activate
# conda activate itkm
