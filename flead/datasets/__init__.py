"""Datasets: the Intel Berkeley Lab data (download, parse) and the day-partitioned Parquet lake."""
