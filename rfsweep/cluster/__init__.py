"""Running jobs on a cluster: SLURM's job context and requeue (`slurm`), the pre-emption signals (`signals`), one
trainer per run folder (`lease`) and the ranks' agreement before training (`ranks`); a resume's config check lives
in `rfsweep.runfolder` and the sweep's summary in `rfsweep.run.summary`. Nothing here needs SLURM to be installed:
outside a SLURM job every query answers None."""
