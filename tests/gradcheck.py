"""Central finite differences, shared by the gradient tests."""
import numpy as np


def numeric_partial(f, a, index, eps=1e-6):
    """d f() / d a[index] by central differences; a is perturbed in place and restored."""
    old = a[index]
    a[index] = old + eps
    up = f()
    a[index] = old - eps
    down = f()
    a[index] = old
    return (up - down) / (2 * eps)


def numeric_grad(f, a, eps=1e-6):
    """The gradient of the scalar f() with respect to every element of a."""
    g = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        g[index] = numeric_partial(f, a, index, eps)
    return g


def sampled_numeric_grad(f, a, rng, n=8, eps=1e-6):
    """The gradient of f() at up to n random elements of a: {index: value}."""
    picks = rng.choice(a.size, min(n, a.size), replace=False)
    return {i: numeric_partial(f, a, i, eps) for i in (np.unravel_index(p, a.shape) for p in picks)}
