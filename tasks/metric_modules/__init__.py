"""moebench's metrics as Hugging Face `evaluate` modules, one script per benchmark family:

    moebench_glue.py       GLUE (configurations: the task names, e.g. "mrpc")
    moebench_superglue.py  SuperGLUE (boolq, cb, copa, multirc, record, rte, wic, wsc)
    moebench_squad.py      SQuAD's official scripts (configurations "v1.1", "v2.0")
    moebench_seqeval.py    CoNLL entity-level precision, recall, F1 (seqeval)

with the helpers they import (label_metrics.py, answer_strings.py), which evaluate copies
beside each script. They ship inside the package and load by path, never from the Hub:

    evaluate.load(moebench.metric.shipped("moebench_glue"), "mrpc")

The folder is also a Python package so that tests and the benchmark can import the helpers.
"""
