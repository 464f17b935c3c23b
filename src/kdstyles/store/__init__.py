"""Files and formats: safe writes and the one reader of JSON, CSV, npz and YAML files
(``fileio``), image files (``imageio``), checkpoints (``checkpoints``), a frozen teacher's outputs kept on disk (``outputs``), Slurm scripts and the
values allowed in them (``sbatch``), and the run and comparison folders, the only code that
names their files (``runfolder``)."""
