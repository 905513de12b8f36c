"""Running a sweep on Ray: the second step of a sweep's data.

`sweep` tells the story and is the public face (`run_sweep`, `prepare_sweep`,
`execute_sweep`): `prepare` does every check before Ray and returns the `records`'
PreparedSweep; `runtime` starts or joins Ray; `manifest` writes what `--resume` runs;
`plan` makes the SweepPlan and the stage tasks' resources; `deadlines` holds the time
budget; `tuner` builds (or restores) the Tune run with the search algorithm from `search`
(the classes Tune is handed live in `searchers`, which imports Ray and loads lazily);
`signals` turns Ctrl-C/SIGTERM into a saved, resumable stop; `latency_phase` measures the
baseline and re-times the front; `summary` says how the sweep ended.
Each trial is `pipeline.run_pipeline`, which turns sampled knobs into `requests` with content
`keys`, asks the shared stage `cache` actor for each stage, and runs the stages as Ray tasks
(`stage_tasks`: torch loads in those workers, never in the driver or the trial coordinators);
`tune_callbacks` and `progress` write rows and show progress as trials end.
"""
