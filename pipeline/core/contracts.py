"""Stage contracts: required-column checks on entry and typed selects on exit."""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

import schemas
from pipeline.core.errors import UserError

_SPARK_TYPES: dict[str, T.DataType] = {
    "string": T.StringType(),
    "binary": T.BinaryType(),
    "bool": T.BooleanType(),
    "int32": T.IntegerType(),
    "int64": T.LongType(),
    "float32": T.FloatType(),
    "float64": T.DoubleType(),
    "list<int32>": T.ArrayType(T.IntegerType(), containsNull=False),
    "list<float32>": T.ArrayType(T.FloatType(), containsNull=False),
}


class MissingColumnsError(UserError):
    """A stage was handed a DataFrame without the columns it needs."""


def spark_type(name: str) -> T.DataType:
    try:
        return _SPARK_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown contract type {name!r}; known: {sorted(_SPARK_TYPES)}") from None


def contract_columns(name: str) -> list[dict]:
    return list(schemas.load(name)["columns"])


def spark_schema(name: str) -> T.StructType:
    """The contract's columns as a Spark StructType (partition columns excluded)."""
    return T.StructType(
        [T.StructField(c["name"], spark_type(c["type"]), c["nullable"]) for c in contract_columns(name)]
    )


def require_columns(df: DataFrame, needed: Iterable[str], stage: str) -> None:
    """Raise one clear error naming what `stage` needs, what is missing and what is present."""
    present = list(df.columns)
    missing = [c for c in needed if c not in present]
    if missing:
        raise MissingColumnsError(
            f"{stage}: missing column(s) {', '.join(missing)}; present: {', '.join(present) or '(none)'}"
        )


def _cast(df: DataFrame, name: str, want: T.DataType) -> Column:
    have = df.schema[name].dataType if name in df.columns else None
    if isinstance(want, T.ArrayType) and isinstance(have, T.ArrayType) and have.elementType == want.elementType:
        # Parquet reads every array back with containsNull=true, and Spark cannot cast that to
        # containsNull=false: the element type is what the contract fixes.
        return F.col(name)
    return F.col(name).cast(want)


def select_contract(df: DataFrame, name: str, extra: Iterable[str] = ()) -> DataFrame:
    """End a stage: the contract's columns cast to their types, then any extra columns present."""
    cols: list[Column] = [_cast(df, c["name"], spark_type(c["type"])).alias(c["name"]) for c in contract_columns(name)]
    core = {c["name"] for c in contract_columns(name)}
    cols += [F.col(c) for c in extra if c in df.columns and c not in core]
    return df.select(*cols)
