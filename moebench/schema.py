"""What a trial's MLflow run records, by name: the tags, the per-epoch metric prefixes and the
artifacts. The tracking callback writes them; the export, the board and the live view read them.
No Ray, no torch: a board rebuilt from an export needs neither.
"""

TAG_FINGERPRINT = "moebench.fingerprint"
TAG_HIGHER_IS_BETTER = "moebench.higher_is_better"
TAG_SPLITS = "moebench.splits"
TAG_ERROR = "moebench.error"
TAG_GROUP = "moebench.task_group"
TAG_MAIN_METRIC = "moebench.main_metric"
TAG_COMMAND = "moebench.command"
TAG_CONFIG = "moebench.config"
TAG_STOPPED_EARLY = "moebench.stopped_early"
TAG_HARDWARE = "moebench.hardware"
TAG_INTERRUPTED = "moebench.interrupted"  # on a KILLED run: what stopped its sweep mid-trial
TAG_EXPERIMENT = "moebench.experiment"

EPOCH_PREFIXES = ("train/", "select/", "report/", "diagnostics/")
HISTORY = "history.json"  # per-epoch metrics, one artifact, so an export needs no call per metric
REPORT_OUTCOMES = "report_outcomes.json"  # the selected epoch's example-level report predictions and golds
