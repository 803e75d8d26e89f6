"""Human names for what the charts draw: settings ("mlp, none, lr 0.01"), analyses
("bs 32 vs bs 256, seed 0"), single trials ("bs 64, lr 0.1, seed 1")."""

from __future__ import annotations

import pandas as pd

from warehouse import queries as q


def _fmt(col: str, v: object) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return f"{col} ?"
    if col == "lr":
        return f"lr {float(v):g}"
    if col == "batchnorm":
        return "BN" if bool(v) else "no BN"
    if col == "workers":
        return f"{int(v)} worker" + ("s" if int(v) != 1 else "")
    if col == "seed":
        return f"seed {int(v)}"
    if col == "batch_size":
        return f"bs {int(v)}"
    if col == "lr_scaling":
        return {"none": "fixed lr", "linear": "linear scaling", "sqrt": "sqrt scaling"}.get(
            str(v), str(v)
        )
    return str(v)


def setting_text(col: str, v: object) -> str:
    """One setting as the charts name it: 'lr 0.1', 'linear scaling', 'bs 64', 'BN'."""
    return _fmt(col, v)


def varying_columns(df: pd.DataFrame, cols: list[str]) -> list[str]:
    """The columns of `cols` that tell rows apart beyond the columns before them (e.g.
    batchnorm is left out when each model has one batchnorm value)."""
    varying: list[str] = []
    seen = 1
    for c in cols:
        n = df.groupby([*varying, c], dropna=False).ngroups
        if n > seen:
            varying.append(c)
            seen = n
    return varying


def series_label(df: pd.DataFrame, exclude: tuple[str, ...] = ("batch_size",)) -> pd.Series:
    """A short name per row for the configuration columns that vary in `df` (other than
    batch size): 'none, lr 0.01' - lines of different settings stay apart in a chart."""
    cols = [c for c in q.GROUP if c in df.columns and c not in exclude]
    if df.empty:
        return pd.Series([], dtype=str, index=df.index)
    varying = varying_columns(df, cols)
    if not varying:
        return pd.Series(["all"] * len(df), index=df.index)
    parts = [df[c].map(lambda v, c=c: _fmt(c, v)) for c in varying]
    out = parts[0].astype(str)
    for p in parts[1:]:
        out = out + ", " + p.astype(str)
    return out.astype(str)


_ANALYSIS_SETTINGS = ("experiment", "dataset", "model", "lr_scaling", "lr")


def analysis_labels(df: pd.DataFrame) -> dict[str, str]:
    """analysis_id -> a human name, unique among the analyses in `df` (rows of
    `landscape_1d` / `landscape_2d`): 'bs 32 vs bs 256, seed 0' for an interpolation,
    'bs 256, seed 0' for a surface, plus the settings that tell same-named ones apart
    ('..., linear scaling'); the short id is appended only if nothing else does."""
    if df.empty:
        return {}
    cols = ["analysis_id", "batch_size_a", "batch_size_b", "seed"]
    cols += [c for c in _ANALYSIS_SETTINGS if c in df.columns]
    one = df[cols].drop_duplicates("analysis_id").reset_index(drop=True)

    def base(r: pd.Series) -> str:
        a = _fmt("batch_size", r["batch_size_a"])
        if pd.notna(r.get("batch_size_b")):
            a += " vs " + _fmt("batch_size", r["batch_size_b"])
        return f"{a}, {_fmt('seed', r['seed'])}" if pd.notna(r["seed"]) else a

    names = one.apply(base, axis=1)
    settings = [c for c in _ANALYSIS_SETTINGS if c in one.columns]
    for _name, idx in one.groupby(names).groups.items():
        if len(idx) < 2:
            continue
        sub = one.loc[idx]
        extra = varying_columns(sub, settings)
        for i in idx:
            tail = ", ".join(_fmt(c, one.at[i, c]) for c in extra)
            if tail:
                names.at[i] = f"{names.at[i]}, {tail}"
    dup = names.duplicated(keep=False)
    names[dup] = names[dup] + " (" + one.loc[dup, "analysis_id"].astype(str).str[:6] + ")"
    return dict(zip(one["analysis_id"], names, strict=True))


def trial_label(r: pd.Series | dict) -> str:
    """'quick-mnist1d: mlp, bs 64, lr 0.1 (fixed lr), seed 1'."""
    get = r.get
    rule = _fmt("lr_scaling", get("lr_scaling"))
    return (
        f"{get('experiment')}: {get('model')}, {_fmt('batch_size', get('batch_size'))}, "
        f"{_fmt('lr', get('lr'))} ({rule}), {_fmt('seed', get('seed'))}"
    )
