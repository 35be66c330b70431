"""DAVIS J (region IoU) and F (boundary F-measure) for binary masks."""
import math

import numpy as np
from scipy import ndimage


def j_score(pred, gt):
    pred, gt = pred.astype(bool), gt.astype(bool)
    u = np.logical_or(pred, gt).sum()
    if u == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / u)


def boundary(m):
    """pixels of m that have a 4-neighbour outside m (image border counts as outside)."""
    m = m.astype(bool)
    er = ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return m & ~er


def disk(r):
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def f_score(pred, gt):
    """boundary F with tolerance ceil(0.008 * image diagonal), matched by dilation with a disk."""
    H, W = gt.shape
    tol = int(math.ceil(0.008 * math.hypot(H, W)))
    bp, bg = boundary(pred), boundary(gt)
    np_, ng = bp.sum(), bg.sum()
    if np_ == 0 and ng == 0:
        return 1.0
    if np_ == 0 or ng == 0:
        return 0.0
    se = disk(tol)
    dg = ndimage.binary_dilation(bg, structure=se)
    dp = ndimage.binary_dilation(bp, structure=se)
    prec = (bp & dg).sum() / np_
    rec = (bg & dp).sum() / ng
    if prec + rec == 0:
        return 0.0
    return float(2 * prec * rec / (prec + rec))
