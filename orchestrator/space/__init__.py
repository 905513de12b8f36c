"""What to search: a sweep's input, validated before any Ray work starts.

The path of a sweep's data starts here: a YAML search space (`config`) and the run's settings
(`options`) become a frozen `SearchSpace` + `SweepOptions`; `coherence` says which knob
combinations run the same model; `knobs` names the searched knobs as result columns;
`constraints` are the validation-metric limits a trial must meet. Torch- and Ray-free.
"""
