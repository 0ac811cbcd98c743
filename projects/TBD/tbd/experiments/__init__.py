"""
The machinery of the tools that train and measure (``tools/*.py`` are short scripts over it).

Shared by several tools:

* :mod:`.runs`: ``train_net.py`` stages in subprocesses (``command.json``, ``metrics.json``, the
  LR schedule, finished / cleared / recorded-command checks, several runs at a time);
* :mod:`.carry_over`: runs recorded in an earlier results json, reused without training;
* :mod:`.environment`: versions, CPU, git commit and dirty flag, date;
* :mod:`.tables`: numbers as reports show them (markdown, means over seeds, strict JSON).

The ablation benchmark (``tools/benchmark_ablation.py``), and its tuning:

* :mod:`.regimes`: the benchmark regimes as data (rows, configs, schedules, targets);
* :mod:`.targets`: the targets and the plateau judgement;
* :mod:`.harmony_runs`: harmony statistics of a trained run, cached in its directory;
* :mod:`.figures`: score-vs-IoU panels, TFD masks, detection pictures;
* :mod:`.ablation`: plan, train, summarize, write the results json;
* :mod:`.ablation_report`: the results markdown;
* :mod:`.tuning`: distillation weights chosen on a held-out split (tools/tune_distillation.py).

The cost of a training step (``tools/benchmark_step.py``): :mod:`.cost`.
"""
