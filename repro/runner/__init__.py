"""The runner: how the study's training runs get onto a machine or a cluster and into dvc.lock.

``grid`` is the study's grid (datasets × variants × seeds, with its checks and filters); ``plan`` what a call would
train, its estimate and the question before a long start; ``execute`` the runner itself (a Dask task per stale stage,
one ``dvc commit`` at a time); ``progress`` its progress line; ``cluster`` the cluster settings (local, SLURM, PBS, SGE,
LSF); ``stage_task`` what a worker runs for one stage; ``equivalence`` the re-record rule's proof (old and new training
code on the same runs). ``repro.study`` is the command line.

It may import ``repro.config``, ``repro.provenance``, ``repro.data.registry``, ``repro.models`` (to check a grid) and
``repro.complexity`` (the FLOPs of a variant without committed runs, for an estimate); the training code only in
``equivalence`` (which names the machine a proof ran on). A run is the stage's own command from dvc.yaml, in its own
process, so the runner's processes never load torch for it.
"""
