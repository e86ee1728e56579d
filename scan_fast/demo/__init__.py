"""The demo app, apart from the library: `scan-fast demo` (main_job.py) compares pruning strategies on
small generated data sets (data_sets.py: shapes and its clean and hard-caption forms, colour digits
from colour_digits.py) and writes its table, report and accuracy-vs-compute plots. It uses the library
(scan_fast.train, scan_fast.data, scan_fast.schedule) as a user would; of the package, only the command
line (cli.py) imports it.
"""
