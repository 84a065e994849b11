"""Vectorised COCO bbox evaluation that reproduces pycocotools' COCOeval bit for bit, several times faster.

pycocotools spends its time in Python loops: ``evaluateImg`` matches every detection against every ground truth
for each (image, category, area range, IoU threshold), and ``accumulate`` re-concatenates per-image arrays for each
(category, area, maxDets). Here the same decisions are made on whole arrays:

- IoUs use the arithmetic of pycocotools' C ``bbIou`` (same operations in the same order, so the same doubles);
- greedy matching runs one detection rank at a time over all (image, category) pairs at once, keeping COCOeval's
  rules: ground truths sorted non-ignored first, a matched non-crowd ground truth is taken, crowd ones can be
  matched again, the best IoU wins and among equal IoUs the *last* one (COCOeval's ``<`` test), a non-ignored match
  stops the search before ignored ones, a match to a ground truth with id 0 counts as no match;
- accumulation keeps COCOeval's order of operations (image order, stable score sort, ``tp / (fp + tp + eps)``),
  and pycocotools' own ``summarize`` turns the arrays into the 12 stats.

faster-coco-eval was measured too: its precision values differ from pycocotools' by up to 2.2e-16 (it rounds
``tp / (tp + fp + eps)`` differently), so its stats are not bit-identical; this module's are (see the tests).
"""
import contextlib
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np

MATCH_MIN_IOU = 0.5  # the lowest COCO IoU threshold; a detection below it against every ground truth never matches


class FastCocoEval:
    """Reusable runner for one ground truth (a pycocotools ``COCO``); ``run`` scores one set of results."""

    def __init__(self, coco_gt):
        from pycocotools.cocoeval import Params

        self.params = Params(iouType="bbox")
        self.image_ids = np.asarray(sorted(coco_gt.getImgIds()), dtype=np.int64)
        self.category_ids = np.asarray(sorted(coco_gt.getCatIds()), dtype=np.int64)
        anns = [a for a in coco_gt.dataset.get("annotations", []) if a["category_id"] in coco_gt.cats]
        for i, a in enumerate(anns):
            if "area" not in a:
                raise KeyError(f"ground-truth annotation {a.get('id', i)} has no 'area' (COCOeval needs it)")
        # Dataset order is kept: COCOeval visits the ground truths of one (image, category) in that order.
        self.gt_image = np.asarray([a["image_id"] for a in anns], dtype=np.int64)
        self.gt_category = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
        self.gt_box = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        self.gt_area = np.asarray([a["area"] for a in anns], dtype=np.float64)
        self.gt_crowd = np.asarray([bool(int(a.get("iscrowd", 0))) for a in anns], dtype=bool)
        self.gt_id = np.asarray([a["id"] for a in anns], dtype=np.int64)

    def run(self, results: List[dict],
            img_ids: Optional[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray, list, np.ndarray]:
        """Returns (12 stats, precision [T,R,K,A,M], category ids in K order, IoU thresholds), as COCOeval would."""
        p = self.params
        images = np.unique(np.asarray(img_ids, dtype=np.int64)) if img_ids is not None else self.image_ids
        cats = self.category_ids
        gt = _select(self.gt_image, self.gt_category, images, cats)
        det_image = np.asarray([r["image_id"] for r in results], dtype=np.int64)
        det_category = np.asarray([r["category_id"] for r in results], dtype=np.int64)
        dt = _select(det_image, det_category, images, cats)
        det_box = np.asarray([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)[dt.index]
        det_score = np.asarray([r["score"] for r in results], dtype=np.float64)[dt.index]

        # Detections: grouped by (category, image) pair, best score first (stable), at most maxDets[-1] per pair.
        order = np.argsort(-det_score, kind="mergesort")
        order = order[np.argsort(dt.pair[order], kind="mergesort")]
        det_pair, det_box, det_score = dt.pair[order], det_box[order], det_score[order]
        rank = _rank_in_group(det_pair)
        keep = rank < p.maxDets[-1]
        det_pair, det_box, det_score, rank = det_pair[keep], det_box[keep], det_score[keep], rank[keep]
        det_area = det_box[:, 2] * det_box[:, 3]  # what COCO.loadRes stores as a bbox result's area

        gt_sel = gt.index[np.argsort(gt.pair, kind="mergesort")]
        gt_pair = np.sort(gt.pair, kind="mergesort")
        ious = _PairIous(det_pair, det_box, gt_pair, self.gt_box[gt_sel], self.gt_crowd[gt_sel])

        num_t, num_a = len(p.iouThrs), len(p.areaRng)
        det_matched = np.zeros((num_a, num_t, len(det_pair)), dtype=bool)  # dtm != 0 in COCOeval
        det_ignored = np.zeros((num_a, num_t, len(det_pair)), dtype=bool)  # dtIgnore in COCOeval
        gt_ignored = np.zeros((num_a, len(gt_pair)), dtype=bool)
        for a, (lo, hi) in enumerate(p.areaRng):
            gt_area = self.gt_area[gt_sel]
            gt_ignored[a] = self.gt_crowd[gt_sel] | (gt_area < lo) | (gt_area > hi)
            match_id, match_ignored = ious.match(gt_ignored[a], self.gt_id[gt_sel], np.asarray(p.iouThrs))
            out_of_range = (det_area < lo) | (det_area > hi)
            det_matched[a] = match_id != 0
            det_ignored[a] = match_ignored | (~det_matched[a] & out_of_range[None, :])

        precision, recall = _accumulate(p, len(images), cats, det_pair, rank, det_score, det_matched,
                                        det_ignored, gt_pair, gt_ignored)
        return _summarize(p, precision, recall), precision, [int(c) for c in cats], np.asarray(p.iouThrs)


class _Selection:
    def __init__(self, index: np.ndarray, pair: np.ndarray):
        self.index, self.pair = index, pair


def _select(image: np.ndarray, category: np.ndarray, images: np.ndarray, cats: np.ndarray) -> _Selection:
    """Entries whose image and category are evaluated, with their (category, image) pair key."""
    img_pos = np.searchsorted(images, image)
    cat_pos = np.searchsorted(cats, category)
    ok = (img_pos < len(images)) & (cat_pos < len(cats))
    ok[ok] &= (images[img_pos[ok]] == image[ok]) & (cats[cat_pos[ok]] == category[ok])
    index = np.flatnonzero(ok)
    # Category-major keys make one category's pairs contiguous and in image order, as COCOeval concatenates them.
    return _Selection(index, cat_pos[index] * len(images) + img_pos[index])


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal keys (keys already grouped)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, lengths)


def _group_bounds(sorted_keys: np.ndarray, keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    start = np.searchsorted(sorted_keys, keys, side="left")
    return start, np.searchsorted(sorted_keys, keys, side="right") - start


def bbox_iou_like_pycocotools(det: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of [x, y, w, h] boxes with the operations of pycocotools' ``bbIou`` (crowd: divide by det area)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.fmin(det[:, 2] + det[:, 0], gt[:, 2] + gt[:, 0]) - np.fmax(det[:, 0], gt[:, 0])
        h = np.fmin(det[:, 3] + det[:, 1], gt[:, 3] + gt[:, 1]) - np.fmax(det[:, 1], gt[:, 1])
        inter = w * h
        det_area = det[:, 2] * det[:, 3]
        union = np.where(crowd, det_area, det_area + gt[:, 2] * gt[:, 3] - inter)
        return np.where((w <= 0) | (h <= 0), 0.0, inter / union)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + count) for each pair of values."""
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))


class _PairIous:
    """IoUs of every (detection, ground truth) of each (category, image) pair that has both, and the matching."""

    def __init__(self, det_pair, det_box, gt_pair, gt_box, gt_crowd):
        self.num_dets, self.num_gts = len(det_pair), len(gt_pair)
        pairs = np.intersect1d(det_pair, gt_pair)
        det_start, det_count = _group_bounds(det_pair, pairs)
        gt_start, self.gt_count = _group_bounds(gt_pair, pairs)
        self.gt_crowd = gt_crowd
        # Ground truths of those pairs (dataset order inside a pair) and the pair each belongs to.
        self.pair_gts = _ranges(gt_start, self.gt_count)
        self.pair_of_gt = np.repeat(np.arange(len(pairs)), self.gt_count)
        sizes = det_count * self.gt_count
        owner = np.repeat(np.arange(len(pairs)), sizes)
        local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        det = det_start[owner] + local // self.gt_count[owner]  # detection-major (d, g) entries of each pair
        gt = gt_start[owner] + local % self.gt_count[owner]
        iou = bbox_iou_like_pycocotools(det_box[det], gt_box[gt], gt_crowd[gt])
        # A detection below the lowest threshold against every ground truth never matches: leave it out.
        candidate = np.zeros(self.num_dets, dtype=bool)
        candidate[det[iou >= MATCH_MIN_IOU]] = True
        cand_dets = np.flatnonzero(candidate)  # grouped by pair, score order inside a pair
        self.candidate_rank = np.full(self.num_dets, -1, dtype=np.int64)
        self.candidate_rank[cand_dets] = _rank_in_group(det_pair[cand_dets])
        keep = candidate[det]
        self.num_candidates = np.bincount(owner[keep], minlength=len(pairs)) // np.maximum(self.gt_count, 1)
        self.entry_pair, self.det, self.gt, self.iou = owner[keep], det[keep], gt[keep], iou[keep]

    def match(self, gt_ignored: np.ndarray, gt_ids: np.ndarray, thresholds: np.ndarray):
        """COCOeval's greedy matching for one area range.

        Returns (matched ground-truth id or 0, matched to an ignored ground truth), both [T, num_dets].
        """
        num_t = len(thresholds)
        match_id = np.zeros((num_t, self.num_dets), dtype=np.int64)
        match_ignored = np.zeros((num_t, self.num_dets), dtype=bool)
        if len(self.iou) == 0:
            return match_id, match_ignored
        # COCOeval visits a pair's ground truths non-ignored first (stable sort): each one's slot in that order.
        order = np.argsort(gt_ignored[self.pair_gts], kind="mergesort")
        order = order[np.argsort(self.pair_of_gt[order], kind="mergesort")]
        slot = np.zeros(self.num_gts, dtype=np.int64)
        slot[self.pair_gts[order]] = _rank_in_group(self.pair_of_gt[order])
        thr = np.minimum(thresholds, 1 - 1e-10)[None, :, None]

        # Pad per bucket of similar ground-truth counts so wide pairs do not inflate everyone's arrays.
        bucket_of_pair = np.ceil(np.log2(np.maximum(self.gt_count, 1))).astype(np.int64)
        for bucket in np.unique(bucket_of_pair):
            members = np.flatnonzero((bucket_of_pair == bucket) & (self.num_candidates > 0))
            if len(members) == 0:
                continue
            # Most candidates first, so the pairs still active at step s are a prefix.
            members = members[np.argsort(-self.num_candidates[members], kind="mergesort")]
            row = np.full(len(self.gt_count), -1, dtype=np.int64)
            row[members] = np.arange(len(members))
            width, steps = int(self.gt_count[members].max()), int(self.num_candidates[members].max())
            iou = np.full((len(members), steps, width), -1.0)
            det_at = np.zeros((len(members), steps), dtype=np.int64)
            sel = row[self.entry_pair] >= 0
            r, k, s = row[self.entry_pair[sel]], self.candidate_rank[self.det[sel]], slot[self.gt[sel]]
            iou[r, k, s] = self.iou[sel]
            det_at[r, k] = self.det[sel]
            ids = np.zeros((len(members), width), dtype=np.int64)
            ignored = np.ones((len(members), width), dtype=bool)
            crowd = np.zeros((len(members), width), dtype=bool)
            in_bucket = row[self.pair_of_gt] >= 0
            g = self.pair_gts[in_bucket]
            gr, gs = row[self.pair_of_gt[in_bucket]], slot[g]
            ids[gr, gs], ignored[gr, gs], crowd[gr, gs] = gt_ids[g], gt_ignored[g], self.gt_crowd[g]
            taken = np.zeros((len(members), num_t, width), dtype=bool)
            active = np.searchsorted(-self.num_candidates[members], -np.arange(1, steps + 1), side="right")
            for step in range(steps):
                n = int(active[step])
                best, hit = _best_match(iou[:n, step], thr, taken[:n], ignored[:n], crowd[:n])
                rows, t_idx = np.nonzero(hit)
                slots = best[rows, t_idx]
                taken[rows, t_idx, slots] = True
                dets = det_at[rows, step]
                match_id[t_idx, dets] = ids[rows, slots]
                match_ignored[t_idx, dets] = ignored[rows, slots]
        return match_id, match_ignored


def _best_match(iou, thr, taken, ignored, crowd):
    """One detection per pair against its ground truths, for all thresholds: (slot [P, T], matched [P, T])."""
    available = ~(taken & ~crowd[:, None, :]) & (iou[:, None, :] >= thr)
    value = np.where(available, iou[:, None, :], -np.inf)
    width = iou.shape[1]
    regular = np.where(~ignored[:, None, :], value, -np.inf)
    fallback = np.where(ignored[:, None, :], value, -np.inf)
    # Last index holding the maximum: COCOeval replaces its best match on equal IoU.
    regular_slot = width - 1 - np.argmax(regular[..., ::-1], axis=-1)
    fallback_slot = width - 1 - np.argmax(fallback[..., ::-1], axis=-1)
    has_regular = np.isfinite(regular.max(axis=-1))
    has_fallback = np.isfinite(fallback.max(axis=-1))
    return np.where(has_regular, regular_slot, fallback_slot), has_regular | has_fallback


def _accumulate(p, num_images, cats, det_pair, rank, det_score, det_matched, det_ignored, gt_pair, gt_ignored):
    num_t, num_r, num_k, num_a, num_m = len(p.iouThrs), len(p.recThrs), len(cats), len(p.areaRng), len(p.maxDets)
    precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
    recall = -np.ones((num_t, num_k, num_a, num_m))
    det_cat = det_pair // max(num_images, 1)
    gt_cat = gt_pair // max(num_images, 1)
    det_bounds = np.searchsorted(det_cat, np.arange(num_k + 1))
    gt_bounds = np.searchsorted(gt_cat, np.arange(num_k + 1))
    eps = np.spacing(1)
    for k in range(num_k):
        d0, d1 = det_bounds[k], det_bounds[k + 1]
        g0, g1 = gt_bounds[k], gt_bounds[k + 1]
        for a in range(num_a):
            npig = int(np.count_nonzero(~gt_ignored[a, g0:g1]))
            if npig == 0:
                continue
            for m, max_det in enumerate(p.maxDets):
                sel = np.flatnonzero(rank[d0:d1] < max_det) + d0
                inds = np.argsort(-det_score[sel], kind="mergesort")
                dtm = det_matched[a][:, sel[inds]]
                dtig = det_ignored[a][:, sel[inds]]
                tp_sum = np.cumsum(dtm & ~dtig, axis=1).astype(float)
                fp_sum = np.cumsum(~dtm & ~dtig, axis=1).astype(float)
                nd = tp_sum.shape[1]
                rc = tp_sum / npig
                pr = tp_sum / (fp_sum + tp_sum + eps)
                recall[:, k, a, m] = rc[:, -1] if nd else 0
                if nd == 0:
                    precision[:, :, k, a, m] = 0.0
                    continue
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(num_t):
                    idx = np.searchsorted(rc[t], p.recThrs, side="left")
                    reached = idx < nd
                    q = np.zeros(num_r)
                    q[reached] = pr[t, idx[reached]]
                    precision[t, :, k, a, m] = q
    return precision, recall


def _summarize(p, precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """pycocotools' own summarize on our arrays: the 12 stats with its exact averaging."""
    from pycocotools.cocoeval import COCOeval

    evaluator = COCOeval(iouType="bbox")
    evaluator.params = p
    evaluator.eval = {"params": p, "precision": precision, "recall": recall}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)
