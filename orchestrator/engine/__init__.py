"""Running a sweep on Ray: the second step of a sweep's data.

`sweep` starts or joins Ray (`runtime`), writes the manifest and drives Ray Tune with the
search algorithm from `search`; each trial is `pipeline.run_pipeline`, which turns sampled
knobs into `requests` with content `keys`, asks the shared stage `cache` actor for each
stage, and runs the stages as Ray tasks (`stage_tasks`: torch loads in those workers, never
in the driver or the trial coordinators);
`tune_callbacks` and `progress` write rows and show progress as trials end.
"""
