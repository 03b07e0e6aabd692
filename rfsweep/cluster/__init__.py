"""Running jobs on a cluster: SLURM's job context and requeue (`slurm`), the pre-emption signals (`signals`), one
trainer per run folder (`lease`), the resolved config a resume must match (`drift`) and the sweep's end-of-run
summary (`summary`). Nothing here needs SLURM to be installed: outside a SLURM job every query answers None."""
