"""What to search: a sweep's input, validated before any Ray work starts.

The path of a sweep's data starts here: a YAML search space and the run's settings (`options`)
become a frozen `SearchSpace` + `SweepOptions`. Reading a space, bottom to top:
`checks` (shared FILE: KEY: VALUE errors, did-you-mean, durations) -> `metrics` (metric names
and the validation column each selects on) -> `model` (the frozen dataclasses and the rules
their methods re-check) -> `params` (distributions, checked by each stage's own params) ->
`parse` (YAML data -> SearchSpace, section by section) -> `config` (files: `load_space`).
`coherence` says which knob combinations run the same model; `constraints` are the
validation-metric limits a trial must meet.
Torch- and Ray-free.
"""
