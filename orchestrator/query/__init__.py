"""Reading the store: queries, fronts, reports and the chosen model as a file.

`knobs` turns every searched knob (the rows' `params` JSON) into a typed column; `where`
parses `--where` filters on any column; `pareto` computes fronts and hypervolume on validation
metrics; `frontview` prints the front table; `plots` and `report` draw and write it up;
`export` rebuilds a chosen trial's model (`load_model`) and writes it out (`export_trial`).
"""
