"""Component-tree kernels behind the fast MaxBoxAcc (numba).

For one 8-bit map ``v`` the wsolevaluation protocol looks at the binary images
``v > k`` for thresholds ``k`` in 0..255 and at the bounding boxes of their OpenCV
contours. Instead of thresholding and tracing once per threshold, each kernel sweeps the
levels once with a union-find over the pixels sorted by value and reads every level's
boxes off the merged components:

* outer contours (one per 8-connected foreground region; its bounding box is the
  region's): foreground grows as ``k`` falls, so a descending sweep merges regions;
* hole contours (one per 4-connected background region that does not reach the image
  frame; OpenCV traces it on the foreground pixels around the hole, so its bounding box
  is the hole's, one pixel larger on every side): background grows as ``k`` rises, so an
  ascending sweep merges holes;
* the largest contour by ``cv2.contourArea``: always the outer contour of an outermost
  region (a hole's polygon and everything nested in it lie inside the parent's polygon;
  a hole ties with its parent only, and the parent is listed first). The polygon through
  the border pixel centres of region ``C`` encloses ``Fill(C)`` (the region with its
  holes filled) and its area is ``#(2x2 windows inside Fill(C)) + #(2x2 windows with
  exactly 3 pixels in Fill(C)) / 2``. The outermost regions at level ``k`` are exactly
  the 8-connected regions of ``e > k``, where ``e`` is the grey-level hole filling of
  ``v`` (the least, over 4-connected paths to the image frame, of the path's highest
  value), so a descending sweep over ``e`` tracks them with their areas. Ties go to the
  region OpenCV lists first: outermost contours come in reverse raster order of their
  first pixel, so the region whose first pixel comes last wins.

Each level's best IoU against the true boxes is kept in a max-heap with lazy deletion (an
entry goes stale once its region merged or changed), so a level costs only the regions
that changed at it.

Maps are processed with a one-pixel pad around them (padded index
``(row + 1) * (W + 2) + col + 1``) so that neighbour look-ups need no bounds checks: pad
pixels never join the foreground, and in the background sweep they form one permanent
"outside" region.

Boxes are wsolevaluation's integer ``x0, y0, x1, y1`` with inclusive ends: a predicted box
is ``x0 = left column, x1 = min(left + width, W - 1)`` (``cv2.boundingRect``, then the
reference's ``x1 = x + w`` and clipping), and IoU areas carry the ``+ 1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

LEVELS = 256

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
"""The 8 neighbours (row, col offsets) in ring order; bit ``i`` of a neighbour mask is ``_RING[i]``."""


def _neighbour_tables(conn: int) -> tuple[np.ndarray, np.ndarray]:
    """Per 8-bit mask of present neighbours: how many, and which, neighbours to union with.

    Present neighbours that are already connected through each other (inside the 3x3
    window) are in one region, so one representative per group is enough: typically one
    look-up per pixel instead of eight. With ``conn=4`` only the 4-neighbours join, and two
    of them are grouped when a chain of present, 4-adjacent ring pixels joins them.
    """
    count = np.zeros(256, np.int64)
    reps = np.zeros((256, 4), np.int64)
    for mask in range(256):
        present = [i for i in range(8) if mask >> i & 1]
        grouped: set[int] = set()
        chosen = []
        for i in present:
            if i in grouped:
                continue
            group, stack = {i}, [i]
            while stack:
                a = stack.pop()
                for b in present:
                    dr = abs(_RING[a][0] - _RING[b][0])
                    dc = abs(_RING[a][1] - _RING[b][1])
                    if b not in group and ((conn == 8 and max(dr, dc) == 1) or (conn == 4 and dr + dc == 1)):
                        group.add(b)
                        stack.append(b)
            grouped |= group
            members = sorted(group) if conn == 8 else [j for j in sorted(group) if j % 2 == 1]
            if members:
                chosen.append(members[0])
        count[mask] = len(chosen)
        reps[mask, : len(chosen)] = chosen
    return count, reps


def _window_deltas() -> np.ndarray:
    """Per neighbour mask: twice the polygon-area gain when the centre pixel joins.

    Each of the four 2x2 windows holding the centre adds 1/2 when it reaches 3 pixels and
    another 1/2 when it reaches 4, i.e. 1 (in doubled units) whenever it already held 2 or 3.
    """
    out = np.zeros(256, np.int64)
    for mask in range(256):
        bit = [mask >> i & 1 for i in range(8)]
        nw, n, ne, e, se, s, sw, w = bit
        out[mask] = sum(k >= 2 for k in (nw + n + w, n + ne + e, w + sw + s, e + s + se))
    return out


_REP8_COUNT, _REP8 = _neighbour_tables(8)
_REP4_COUNT, _REP4 = _neighbour_tables(4)
_AREA_DELTA = _window_deltas()


@njit(cache=True)
def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True)
def _best_iou(x0: int, y0: int, x1: int, y1: int, gt: np.ndarray, g0: int, g1: int) -> float:
    """Max IoU of one inclusive box against true boxes ``gt[g0:g1]`` (wsolevaluation's formula)."""
    best = 0.0
    area_a = (x1 - x0 + 1) * (y1 - y0 + 1)
    for j in range(g0, g1):
        ix = min(x1, gt[j, 2]) - max(x0, gt[j, 0]) + 1
        iy = min(y1, gt[j, 3]) - max(y0, gt[j, 1]) + 1
        inter = max(0, ix) * max(0, iy)
        area_b = (gt[j, 2] - gt[j, 0] + 1) * (gt[j, 3] - gt[j, 1] + 1)
        den = area_a + area_b - inter
        iou = 0.0 if den <= 0 else inter / den
        if iou > best:
            best = iou
    return best


# ----------------------------------------------------------------------------- max-heap


@njit(cache=True)
def _heap_push(key: np.ndarray, ident: np.ndarray, ver: np.ndarray, size: int, k: float, i: int, v: int) -> int:
    pos = size
    while pos > 0:
        up = (pos - 1) >> 1
        if key[up] >= k:
            break
        key[pos] = key[up]
        ident[pos] = ident[up]
        ver[pos] = ver[up]
        pos = up
    key[pos] = k
    ident[pos] = i
    ver[pos] = v
    return size + 1


@njit(cache=True)
def _heap_pop(key: np.ndarray, ident: np.ndarray, ver: np.ndarray, size: int) -> int:
    size -= 1
    k, i, v = key[size], ident[size], ver[size]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and key[child + 1] > key[child]:
            child += 1
        if k >= key[child]:
            break
        key[pos] = key[child]
        ident[pos] = ident[child]
        ver[pos] = ver[child]
        pos = child
    key[pos] = k
    ident[pos] = i
    ver[pos] = v
    return size


@njit(cache=True)
def _clean_top(key, ident, ver, size, parent, version) -> int:
    """Pop stale entries (region merged away, or changed since) off the heap top."""
    while size > 0 and (parent[ident[0]] != ident[0] or version[ident[0]] != ver[0]):
        size = _heap_pop(key, ident, ver, size)
    return size


# ----------------------------------------------------------------------------- helpers


@njit(cache=True)
def _mask(parent: np.ndarray, p: int, w2: int) -> int:
    """Bit mask (ring order) of the neighbours of padded pixel ``p`` already in the union-find."""
    return (
        (parent[p - w2 - 1] >= 0)
        | ((parent[p - w2] >= 0) << 1)
        | ((parent[p - w2 + 1] >= 0) << 2)
        | ((parent[p + 1] >= 0) << 3)
        | ((parent[p + w2 + 1] >= 0) << 4)
        | ((parent[p + w2] >= 0) << 5)
        | ((parent[p + w2 - 1] >= 0) << 6)
        | ((parent[p - 1] >= 0) << 7)
    )


@njit(cache=True, nogil=True)
def quantise(maps: np.ndarray, normalize: bool) -> np.ndarray:
    """The 8-bit score maps of wsolevaluation, bit for bit: ``((m - min) / (max - min) * 255)`` truncated.

    With ``normalize`` a map holding NaN, or a constant map, becomes zeros
    (``normalize_scoremap``); without it the values are taken as they are (the caller
    checks that they lie in [0, 1]). Arithmetic in float64, as numpy does for float64 maps.
    """
    n, h, w = maps.shape
    out = np.empty((n, h, w), np.uint8)
    for i in range(n):
        lo = np.inf
        hi = -np.inf
        bad = False
        for r in range(h):
            for c in range(w):
                x = np.float64(maps[i, r, c])
                if np.isnan(x):
                    bad = True
                lo = min(lo, x)
                hi = max(hi, x)
        if normalize:
            span = hi - lo
            if bad or not span > 0:
                out[i] = 0
                continue
            for r in range(h):
                for c in range(w):
                    out[i, r, c] = np.uint8(int((np.float64(maps[i, r, c]) - lo) / span * 255.0))
        else:
            for r in range(h):
                for c in range(w):
                    out[i, r, c] = np.uint8(int(np.float64(maps[i, r, c]) * 255.0))
    return out


@njit(cache=True)
def _pad(v2d: np.ndarray) -> np.ndarray:
    """The map as int32 with a one-pixel pad of zeros, flattened (padded index ``(r + 1) * (W + 2) + c + 1``)."""
    h, w = v2d.shape
    w2 = w + 2
    vp = np.zeros((h + 2) * w2, np.int32)
    for r in range(h):
        for c in range(w):
            vp[(r + 1) * w2 + c + 1] = v2d[r, c]
    return vp


@njit(cache=True)
def _counting_order(key: np.ndarray, h: int, w: int, vp: np.ndarray, only_above: bool) -> tuple[np.ndarray, np.ndarray]:
    """Padded indices of the real pixels sorted by ``key`` (raster order within a level), with level offsets.

    With ``only_above``, only the pixels whose ``key`` exceeds ``vp`` (and sorted by ``vp``):
    the pixels that ever lie in a hole.
    """
    w2 = w + 2
    start = np.zeros(LEVELS + 1, np.int64)
    for r in range(h):
        for c in range(w):
            p = (r + 1) * w2 + c + 1
            if only_above:
                if key[p] > vp[p]:
                    start[vp[p] + 1] += 1
            else:
                start[key[p] + 1] += 1
    for lv in range(LEVELS):
        start[lv + 1] += start[lv]
    fill = start[:LEVELS].copy()
    order = np.empty(start[LEVELS], np.int32)
    for r in range(h):
        for c in range(w):
            p = (r + 1) * w2 + c + 1
            if only_above:
                if key[p] > vp[p]:
                    x = vp[p]
                    order[fill[x]] = p
                    fill[x] += 1
            else:
                x = key[p]
                order[fill[x]] = p
                fill[x] += 1
    return order, start


@njit(cache=True)
def _fill_holes(vp: np.ndarray, h: int, w: int) -> np.ndarray:
    """Grey-level hole filling of a padded map (the pad holds 0).

    ``e(p)`` = least, over 4-connected paths from ``p`` to the image frame, of the highest
    value on the path; a pixel lies in the exterior background of ``v > k`` exactly when
    ``e(p) <= k``, so ``e > k`` is ``v > k`` with its holes filled. Computed as the
    reconstruction by erosion of the map from its frame with Vincent's hybrid algorithm
    (L. Vincent, IEEE TIP 1993): one forward and one backward raster scan, then a FIFO
    for what the scans left.
    """
    w2 = w + 2
    n2 = (h + 2) * w2
    e = np.zeros(n2, np.int32)
    # forward scan (the marker is 255 inside, the pad's 0 outside)
    for r in range(h):
        base = (r + 1) * w2 + 1
        for p in range(base, base + w):
            m = e[p - w2]
            if e[p - 1] < m:
                m = e[p - 1]
            e[p] = vp[p] if vp[p] > m else m
    queue = np.empty(n2, np.int32)
    queued = np.zeros(n2, np.bool_)
    head = 0
    count = 0
    # backward scan; pad pixels hold e = v = 0, so they never count as lowerable
    for r in range(h - 1, -1, -1):
        base = (r + 1) * w2 + 1
        for p in range(base + w - 1, base - 1, -1):
            m = e[p]
            if e[p + w2] < m:
                m = e[p + w2]
            if e[p + 1] < m:
                m = e[p + 1]
            ep = vp[p] if vp[p] > m else m
            e[p] = ep
            q = p + w2
            if (e[q] > ep and e[q] > vp[q]) or (e[p + 1] > ep and e[p + 1] > vp[p + 1]):
                queue[(head + count) % n2] = p
                queued[p] = True
                count += 1
    while count > 0:
        p = queue[head]
        head = (head + 1) % n2
        count -= 1
        queued[p] = False
        for q in (p - w2, p - 1, p + 1, p + w2):
            # pad pixels hold e = v = 0 and are never lowered
            if e[q] > e[p] and e[q] != vp[q]:
                e[q] = max(e[p], vp[q])
                if not queued[q]:
                    queue[(head + count) % n2] = q
                    queued[q] = True
                    count += 1
    return e


# ----------------------------------------------------------------------------- sweeps


@njit(cache=True)
def _outer_sweep(order, start, h, w, gt, g0, g1, out):
    """out[k] = best IoU over the outer contours of ``v > k`` (every 8-connected region), k < max(v)."""
    w2 = w + 2
    n2 = (h + 2) * w2
    offs = np.array([-w2 - 1, -w2, -w2 + 1, 1, w2 + 1, w2, w2 - 1, -1])
    parent = np.full(n2, -1, np.int32)
    size = np.empty(n2, np.int32)
    bx0 = np.empty(n2, np.int32)
    by0 = np.empty(n2, np.int32)
    bx1 = np.empty(n2, np.int32)
    by1 = np.empty(n2, np.int32)
    version = np.zeros(n2, np.int32)
    stamp = np.full(n2, -1, np.int32)
    dirty = np.empty(h * w, np.int32)
    hkey = np.empty(h * w + 1, np.float64)
    hid = np.empty(h * w + 1, np.int32)
    hver = np.empty(h * w + 1, np.int32)
    hsize = 0
    for lv in range(LEVELS - 1, 0, -1):
        a, b = start[lv], start[lv + 1]
        if a == b:
            if hsize > 0:
                out[lv - 1] = hkey[0]
            continue
        nd = 0
        for t in range(a, b):
            p = order[t]
            parent[p] = p
            size[p] = 1
            c = p % w2 - 1
            r = p // w2 - 1
            bx0[p] = c
            bx1[p] = c
            by0[p] = r
            by1[p] = r
            ra = p
            m = _mask(parent, p, w2)
            for j in range(_REP8_COUNT[m]):
                rb = _find(parent, p + offs[_REP8[m, j]])
                if rb == ra:
                    continue
                if size[ra] < size[rb]:
                    ra, rb = rb, ra
                parent[rb] = ra
                size[ra] += size[rb]
                bx0[ra] = min(bx0[ra], bx0[rb])
                by0[ra] = min(by0[ra], by0[rb])
                bx1[ra] = max(bx1[ra], bx1[rb])
                by1[ra] = max(by1[ra], by1[rb])
            dirty[nd] = ra
            nd += 1
        for t in range(nd):
            root = dirty[t]
            if parent[root] != root or stamp[root] == lv:
                continue
            stamp[root] = lv
            version[root] += 1
            iou = _best_iou(bx0[root], by0[root], min(bx1[root] + 1, w - 1), min(by1[root] + 1, h - 1), gt, g0, g1)
            hsize = _heap_push(hkey, hid, hver, hsize, iou, root, version[root])
        hsize = _clean_top(hkey, hid, hver, hsize, parent, version)
        out[lv - 1] = hkey[0]


@njit(cache=True)
def _hole_sweep(order, start, e, h, w, gt, g0, g1, out, top):
    """out[k] = max(out[k], best IoU over the hole contours of ``v > k``), for k < top.

    ``order``/``start``: the pixels that ever lie in a hole (``e > v``), by value. A hole
    at level ``k`` is a 4-connected region of those with ``v <= k < e``; all its pixels
    share ``e`` (they reach the frame together), it never touches a pixel outside the set,
    and it disappears at level ``e`` (its heap entries go stale then).
    """
    w2 = w + 2
    n2 = (h + 2) * w2
    offs = np.array([-w2 - 1, -w2, -w2 + 1, 1, w2 + 1, w2, w2 - 1, -1])
    m_total = order.shape[0]
    parent = np.full(n2, -1, np.int32)
    size = np.empty(n2, np.int32)
    bx0 = np.empty(n2, np.int32)
    by0 = np.empty(n2, np.int32)
    bx1 = np.empty(n2, np.int32)
    by1 = np.empty(n2, np.int32)
    version = np.zeros(n2, np.int32)
    stamp = np.full(n2, -1, np.int32)
    dirty = np.empty(m_total, np.int32)
    hkey = np.empty(m_total + 1, np.float64)
    hid = np.empty(m_total + 1, np.int32)
    hver = np.empty(m_total + 1, np.int32)
    hsize = 0
    for lv in range(top):
        a, b = start[lv], start[lv + 1]
        nd = 0
        for t in range(a, b):
            p = order[t]
            parent[p] = p
            size[p] = 1
            c = p % w2 - 1
            r = p // w2 - 1
            bx0[p] = c
            bx1[p] = c
            by0[p] = r
            by1[p] = r
            ra = p
            m = _mask(parent, p, w2)
            for j in range(_REP4_COUNT[m]):
                rb = _find(parent, p + offs[_REP4[m, j]])
                if rb == ra:
                    continue
                if size[ra] < size[rb]:
                    ra, rb = rb, ra
                parent[rb] = ra
                size[ra] += size[rb]
                bx0[ra] = min(bx0[ra], bx0[rb])
                by0[ra] = min(by0[ra], by0[rb])
                bx1[ra] = max(bx1[ra], bx1[rb])
                by1[ra] = max(by1[ra], by1[rb])
            dirty[nd] = ra
            nd += 1
        for t in range(nd):
            root = dirty[t]
            if parent[root] != root or stamp[root] == lv:
                continue
            stamp[root] = lv
            version[root] += 1
            # the hole contour runs on the foreground pixels around the hole
            x0 = bx0[root] - 1
            y0 = by0[root] - 1
            x1 = min(bx1[root] + 2, w - 1)
            y1 = min(by1[root] + 2, h - 1)
            iou = _best_iou(x0, y0, x1, y1, gt, g0, g1)
            hsize = _heap_push(hkey, hid, hver, hsize, iou, root, version[root])
        while hsize > 0 and (parent[hid[0]] != hid[0] or version[hid[0]] != hver[0] or e[hid[0]] <= lv):
            hsize = _heap_pop(hkey, hid, hver, hsize)
        if hsize > 0 and hkey[0] > out[lv]:
            out[lv] = hkey[0]


@njit(cache=True)
def _largest_sweep(order, start, h, w, gt, g0, g1, out):
    """out[k] = IoU of the box of the largest contour (contourArea, OpenCV's tie order), k < max(v)."""
    w2 = w + 2
    n2 = (h + 2) * w2
    offs = np.array([-w2 - 1, -w2, -w2 + 1, 1, w2 + 1, w2, w2 - 1, -1])
    parent = np.full(n2, -1, np.int32)
    size = np.empty(n2, np.int32)
    area2 = np.empty(n2, np.int32)  # twice the polygon area
    bx0 = np.empty(n2, np.int32)
    by0 = np.empty(n2, np.int32)
    bx1 = np.empty(n2, np.int32)
    by1 = np.empty(n2, np.int32)
    first = np.empty(n2, np.int32)  # padded index of the region's first pixel in raster order
    version = np.zeros(n2, np.int32)
    stamp = np.full(n2, -1, np.int32)
    dirty = np.empty(h * w, np.int32)
    hkey = np.empty(h * w + 1, np.float64)
    hid = np.empty(h * w + 1, np.int32)
    hver = np.empty(h * w + 1, np.int32)
    hsize = 0
    scale = float(n2 + 1)
    best = 0.0
    for lv in range(LEVELS - 1, 0, -1):
        a, b = start[lv], start[lv + 1]
        if a == b:
            if hsize > 0:
                out[lv - 1] = best
            continue
        nd = 0
        for t in range(a, b):
            p = order[t]
            parent[p] = p
            size[p] = 1
            area2[p] = 0
            first[p] = p
            c = p % w2 - 1
            r = p // w2 - 1
            bx0[p] = c
            bx1[p] = c
            by0[p] = r
            by1[p] = r
            ra = p
            m = _mask(parent, p, w2)
            for j in range(_REP8_COUNT[m]):
                rb = _find(parent, p + offs[_REP8[m, j]])
                if rb == ra:
                    continue
                if size[ra] < size[rb]:
                    ra, rb = rb, ra
                parent[rb] = ra
                size[ra] += size[rb]
                area2[ra] += area2[rb]
                first[ra] = min(first[ra], first[rb])
                bx0[ra] = min(bx0[ra], bx0[rb])
                by0[ra] = min(by0[ra], by0[rb])
                bx1[ra] = max(bx1[ra], bx1[rb])
                by1[ra] = max(by1[ra], by1[rb])
            # every pixel of the four 2x2 windows holding p is 8-adjacent to p, so their area
            # gain goes to p's region (a window reaching into the pad never holds 3 pixels)
            area2[ra] += _AREA_DELTA[m]
            dirty[nd] = ra
            nd += 1
        for t in range(nd):
            root = dirty[t]
            if parent[root] != root or stamp[root] == lv:
                continue
            stamp[root] = lv
            version[root] += 1
            hsize = _heap_push(hkey, hid, hver, hsize, area2[root] * scale + first[root], root, version[root])
        hsize = _clean_top(hkey, hid, hver, hsize, parent, version)
        root = hid[0]
        best = _best_iou(bx0[root], by0[root], min(bx1[root] + 1, w - 1), min(by1[root] + 1, h - 1), gt, g0, g1)
        out[lv - 1] = best


@njit(cache=True, nogil=True)
def best_iou_levels(
    levels: np.ndarray, gt: np.ndarray, gt_start: np.ndarray, largest: bool, holes: bool, out: np.ndarray
) -> None:
    """Best IoU at every threshold level of every map.

    Args:
        levels: ``N x H x W`` uint8 maps.
        gt: ``G x 4`` int64 true boxes (inclusive x0, y0, x1, y1); pair ``i``'s are
            ``gt[gt_start[i]:gt_start[i + 1]]`` (at least one each).
        gt_start: ``(N + 1,)`` offsets into ``gt``.
        largest: the largest contour only (MaxBoxAcc) instead of every contour.
        holes: with every contour, include hole contours (as ``cv2.RETR_TREE`` does).

        out: ``N x 256`` float64, filled in: entry ``[i, k]`` is the best IoU of map
            ``i``'s boxes at threshold level ``k`` (foreground ``v > k``); levels with no
            foreground hold the IoU of the reference's fallback box ``[0, 0, 0, 0]``.

    Releases the GIL, so threads can split the maps between them (``best_iou_curves`` does).

    """
    n_maps, h, w = levels.shape
    for i in range(n_maps):
        g0, g1 = gt_start[i], gt_start[i + 1]
        vp = _pad(levels[i])
        top = 0
        for r in range(h):
            for c in range(w):
                top = max(top, levels[i, r, c])
        row = out[i]
        empty = _best_iou(0, 0, 0, 0, gt, g0, g1)
        for k in range(top, LEVELS):
            row[k] = empty
        if top == 0:
            continue
        if largest:
            e = _fill_holes(vp, h, w)
            eorder, estart = _counting_order(e, h, w, vp, False)
            _largest_sweep(eorder, estart, h, w, gt, g0, g1, row)
        else:
            order, start = _counting_order(vp, h, w, vp, False)
            _outer_sweep(order, start, h, w, gt, g0, g1, row)
            if holes:
                e = _fill_holes(vp, h, w)
                horder, hstart = _counting_order(e, h, w, vp, True)
                if horder.shape[0] > 0:
                    _hole_sweep(horder, hstart, e, h, w, gt, g0, g1, row, top)
