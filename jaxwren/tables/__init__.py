"""Tables in, matrices out: CSV and Parquet part files in a store -> BigMatrix or batches.

Above ``storage`` and ``sharding`` (it uses both); nothing below imports it.
"""

from jaxwren.tables.batches import iter_table_batches
from jaxwren.tables.ingest import from_csv, from_parquet

__all__ = ["from_csv", "from_parquet", "iter_table_batches"]
