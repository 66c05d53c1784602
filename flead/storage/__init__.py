"""MongoDB access (pymongo) and Parquet lake helpers."""
