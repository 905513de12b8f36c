"""Searches that run on a schedule: the last step of a sweep's data.

`run` is one nightly search (lock the store, warm-start from the earlier results, sweep,
write the report, optionally gc the stage cache); `schedule` writes the cron line, systemd
timer or KubeRay CronJob that runs it.
"""
