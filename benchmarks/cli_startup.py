"""How long the commands that do no work take: `moebench --help`, `list methods`, `list tasks`.

Each command runs as a fresh process (what a user waits for), --repeats times, interleaved;
medians are printed next to `python -c pass` (the interpreter alone) and `import torch` (what
every command paid before the heavy imports moved inside the commands). Target: <= 0.5 s each.

    python benchmarks/cli_startup.py [--repeats 5]
"""
import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import torch": [sys.executable, "-c", "import torch"],
    "moebench --help": [sys.executable, "-m", "moebench.cli", "--help"],
    "moebench list methods": [sys.executable, "-m", "moebench.cli", "list", "methods"],
    "moebench list tasks": [sys.executable, "-m", "moebench.cli", "list", "tasks"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            samples[name].append(time.perf_counter() - start)
    torch_s = statistics.median(samples["import torch"])
    print(f"{'command':<24}{'median s':>10}{'/ import torch':>16}")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"{name:<24}{median:>10.3f}{median / torch_s:>16.2f}")


if __name__ == "__main__":
    main()
