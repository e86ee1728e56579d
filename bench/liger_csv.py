"""Benchmark rows in Liger-Kernel's CSV columns, appended to one file across runs and scripts."""
import csv
import datetime
import os

COLUMNS = (
    "kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name", "x_label",
    "x_value", "y_value_50", "y_value_20", "y_value_80", "extra_benchmark_config_str", "gpu_name", "timestamp",
    "scan_fast_version",
)


def append_rows(path, rows) -> None:
    """Append `rows` (tuples of the columns up to gpu_name); the header goes in when the file is new."""
    from scan_fast import __version__

    new = not os.path.exists(path)
    timestamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(COLUMNS)
        for row in rows:
            if len(row) != len(COLUMNS) - 2:
                raise ValueError(f"a benchmark row needs {len(COLUMNS) - 2} values, got {len(row)}: {row}")
            writer.writerow((*row, timestamp, __version__))
