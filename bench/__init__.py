"""speedsign's benchmarks: `python -m bench [--quick] [--json FILE]` (DESIGN.md section 4).

Every speed-up is a ratio of two variants measured side by side in one run, on the same data
and device, alternating them over several rounds and comparing medians:

- throughput: the report's tutorial loop (`bench.tutorial`) against the `fast` preset;
- frozen: 25 epochs of head training with the backbone run every epoch against cached features;
- fastruns: each approach trained with the `fast` preset in a child process (peak RSS, learning
  curve in wall-clock seconds, final val accuracy);
- accuracy: the tutorial loop on a time budget (val accuracy it reaches), and the input-size table;
- latency: JPEG bytes to probabilities through `speedsign.predict.Predictor`.

`bench.cli` runs them and writes the printed table, `--json FILE`, `docs/benchmarks.md` and
`docs/time_to_accuracy.png`.
"""
