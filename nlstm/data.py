"""Data for examples and the command line: the adding problem, and CSV time series in windows."""
from __future__ import annotations

import csv
import math
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ._validate import positive_int


def adding_problem(n: int, T: int = 100, seed: Optional[int] = None,
                   dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber, 1997), in the form of Le et al. (2015).

    Each sequence has T steps of two features: a value uniform in [0, 1], and a marker
    that is 1 at exactly two steps (one in the first half, one in the second) and 0
    elsewhere. The target is the sum of the two marked values. Predicting the mean (1)
    scores MSE = Var(u1 + u2) = 1/6 ≈ 0.167; solving it means carrying a value across up
    to T steps.

    Returns X: (n, T, 2) and Y: (n, 1).
    """
    n = positive_int("n", n)
    T = positive_int("T", T, minimum=2)
    rng = np.random.default_rng(seed)
    X = np.zeros((n, T, 2), dtype)
    X[:, :, 0] = rng.random((n, T))
    rows = np.arange(n)
    first = rng.integers(0, T // 2, n)
    second = rng.integers(T // 2, T, n)
    X[rows, first, 1] = 1
    X[rows, second, 1] = 1
    Y = (X[rows, first, 0] + X[rows, second, 0])[:, None]
    return X, Y.astype(dtype)


class DataError(ValueError):
    """A problem with the user's data file, worded for a one-line message."""


def read_csv(path, columns: Optional[Sequence[str]] = None) -> Tuple[List[str], np.ndarray]:
    """Read a CSV with a header row into float64 columns.

    columns: the names to read (default: all). Every cell of those columns must be a
    number. Returns (names, data (rows, len(names))). Raises FileNotFoundError for a missing
    file and DataError (a ValueError) for anything wrong inside it.
    """
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} is empty; expected a header row of column names")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                dup = sorted({h for h in header if header.count(h) > 1})
                raise DataError(f"{path} repeats column names {dup}")
            names = list(header) if columns is None else list(columns)
            for name in names:
                if name not in header:
                    raise DataError(f"column {name!r} is not in {path} (columns: {', '.join(header)})")
            idx = [header.index(n) for n in names]
            rows = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue  # blank lines
                line = reader.line_num
                if len(row) != len(header):
                    raise DataError(f"{path} line {line} has {len(row)} fields, the header has {len(header)}")
                values = []
                for i, name in zip(idx, names):
                    cell = row[i].strip()
                    try:
                        v = float(cell)
                    except ValueError:
                        raise DataError(f"{path} line {line}, column {name!r}: {cell!r} is not a number") from None
                    if not math.isfinite(v):
                        raise DataError(f"{path} line {line}, column {name!r}: {cell!r} is not a finite number")
                    values.append(v)
                rows.append(values)
        except csv.Error as e:
            raise DataError(f"{path} is not a readable CSV file: {e}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a UTF-8 text CSV file") from None
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    return names, np.array(rows, np.float64).reshape(len(rows), len(names))


def windows(series: np.ndarray, window: int, target: Optional[np.ndarray] = None,
            horizon: int = 1) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Sliding windows over a (N, F) series for forecasting.

    X[i] = series[i : i + window]; with ``target`` (N,), Y[i] = target[i + window :
    i + window + horizon] (the next ``horizon`` values after the window). Without a target,
    every window that fits is returned (the last one ends at the last row), for prediction.
    Returns X: (M, window, F) and Y: (M, horizon) or None.
    """
    series = np.asarray(series)
    window = positive_int("window", window)
    horizon = positive_int("horizon", horizon)
    N = len(series)
    if target is None:
        M = N - window + 1
        if M < 1:
            raise DataError(f"window {window} is longer than the series ({N} rows)")
        return np.lib.stride_tricks.sliding_window_view(series, window, axis=0).transpose(0, 2, 1).copy(), None
    M = N - window - horizon + 1
    if M < 1:
        raise DataError(f"window {window} + horizon {horizon} is longer than the series ({N} rows)")
    X = np.lib.stride_tricks.sliding_window_view(series[:M + window - 1], window, axis=0)
    Y = np.lib.stride_tricks.sliding_window_view(np.asarray(target)[window:], horizon)[:M]
    return X.transpose(0, 2, 1).copy(), Y.copy()
