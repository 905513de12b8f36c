"""Reading the store: queries, fronts, reports and the chosen model as a file.

`knobs` turns every searched knob (the rows' `params` JSON) into a typed column; `where`
parses `--where` filters on any column; `pareto` computes fronts and hypervolume on validation
metrics; `frontview` prints the front table; `plots` and `report` draw and write it up;
`choose` picks a trial's row (`select_row`, `find_row`), `checkpoints` reads its checkpoint
and rebuilds its model (`load_model`), `export` writes it out (`export_trial`), `recheck`
loads the written files back and measures them, `card` builds their `model.json`.
"""
