"""How the table files store their partition columns (`experiment`): dictionary-encoded, as
the hive partition keys of their directories. `warehouse.layout` writes every file so."""

from __future__ import annotations

import pyarrow as pa

# Columns that are also hive partition keys of the directories (`experiment=<exp>`): stored
# dictionary-encoded in the files' Arrow schema, the type pyarrow infers for a hive key
# (pandas.read_parquet / pyarrow.parquet.read_table use `infer_dictionary=True`), so that
# the default readers of a table folder (pandas, pyarrow, polars, DuckDB with
# hive_partitioning) read it without "Field experiment has incompatible types: string vs
# dictionary". The Parquet physical type is the same BYTE_ARRAY as before: files of older
# batchlab versions (plain strings) read together with newer ones (docs/warehouse.md).
PARTITION_COLUMNS = ("experiment",)
_PARTITION_TYPE = pa.dictionary(pa.int32(), pa.string())


def file_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` as stored in a table file: the partition columns dictionary-encoded."""
    return pa.schema(
        [
            f.with_type(_PARTITION_TYPE)
            if f.name in PARTITION_COLUMNS and pa.types.is_string(f.type)
            else f
            for f in schema
        ],
        metadata=schema.metadata,
    )


def for_file(table: pa.Table) -> pa.Table:
    """`table` cast to `file_schema` (values unchanged)."""
    target = file_schema(table.schema)
    return table if target.equals(table.schema) else table.cast(target)
