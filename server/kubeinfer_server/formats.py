"""The dataset formats ``kubeinfer-server batch`` reads and writes.

Apart from the modules that use them so that the command-line parser can offer
them without importing pyarrow (``serve`` never loads it).
"""

INPUT_FORMATS = ("parquet", "jsonl", "csv")
OUTPUT_FORMATS = ("parquet", "jsonl")
