"""
The cost of distillation (docs/cost.md, tools/benchmark_step.py): step time and peak memory of a
TBD training step against its physical floor, the student's own step plus one no-grad teacher
forward.

* :mod:`.workloads`: the measured variants on one deterministic synthetic batch;
* :mod:`.timing`: interleaved rounds, medians;
* :mod:`.memory`: peak memory, one forked process per variant;
* :mod:`.report`: the ratios against their targets, the markdown section;
* :mod:`.benchmark`: all of it for one student / teacher pair (the json of the tool).
"""
