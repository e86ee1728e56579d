"""ScanEpoch (`--prune scan-epoch`): SCAN's cycle with candidates chosen epoch-wide, not per batch.

The paper's rule takes the int(B rho_ill) highest-loss positions of every batch as ill-matched.
When fewer than rho_ill of the pairs are wrong, the rest are the hardest clean pairs, and pruning
them costs accuracy. Over a whole epoch the losses of mismatched pairs form their own mode, far
above the clean pairs' (a caption of another image stays unexplained however long the model
trains), so the variant cuts the epoch's loss histogram at its valley instead:

    per sample   q = code(l) = #{k : e_k <= l} in 0..254, l = (loss_a + loss_b) / 2 in float32,
                 e_k = float32(exp(LOG_LO + k (LOG_HI - LOG_LO) / 254)), k = 0..253 (one byte a sample;
                 255 marks "not observed this epoch")
    epoch        h = the 255-bin histogram of the codes of every observed sample
    threshold    t = Otsu's cut of h: the bin index maximising w0 w1 (m0 - m1)^2 over cuts
                 {q < t} | {q >= t} (bin centres = the codes; first maximum)
    two modes    s = h smoothed by a centred box of SMOOTH_BINS bins; p0 = the first argmax of s below t,
                 p1 = the first argmax of s at or above t; the losses have a second mode when the lowest
                 s between p0 and p1 is at most VALLEY_RATIO s[p1] (a valley before a second peak)
    ILL          {q >= t} when the losses have two modes and {q >= t} holds at most k_ill = floor(rho_ill n)
                 samples (a wrong-pair mode within the paper's budget); when it holds more and the last
                 preparation found a wrong-pair mode, t and the valley test again on the bins from t up only,
                 until the part above fits (`wrong_pair_cut`: in long runs a third mode, captions with a twin
                 in the batch at ln 2, lies between the learned pairs and the wrong ones); and, with a
                 floor (min_mode_loss: ln(B) / 2 for the CLIP loss over a global batch of B, `wrong_pair_floor`),
                 when the part above peaks (p1 of its cut) at a loss of at least the floor; otherwise the
                 paper's cycle (below)
    RED          the lowest codes up to k_red = floor(rho_red n) samples, below t

n = samples observed in the epoch. "Up to k" takes whole bins while they fit and, from the first bin
that does not, each sample whose keyed hash u(seed, epoch, id) (a uniform 64-bit word) is below
(k - taken) / count x 2^64: a choice by id alone, so any rank can make it for its own ids. Each side
keeps the paper's budget: when ILL takes fewer than k_ill, the rest is not handed to RED (measured:
moving it to the easiest samples pruned 7 points more of the post-warm-up sample-steps and cost 1.6
points of zero-shot accuracy on the demo data, as the late mutation epochs then train on 30% of it).

No separate wrong-pair mode (no valley: clean data, or wrong pairs that do not stand apart; or an upper mode
larger than rho_ill with no valley inside it, or not looked into: on clean shapes, pairs whose caption has a
twin in the batch sit at ln 2 and hold 20% or more of the epoch; or an upper mode that peaks below the floor:
late in a long CLIP run on clean shapes those twins stand apart from the learned pairs, near 0.001, as a mode of
25-32% at 0.65-0.70, where a wrong pair's loss never sits): no loss tells a wrong pair from a hard or
unlucky one, so the cycle is the paper's, exactly: every preparation batch also goes through Scan's per-batch
rule (the same keyed streams), and an epoch without a wrong-pair mode keeps those candidates; the mutation
epochs prune a keyed sample of floor(rate(e) |ILL u RED|) as Scan does, and nothing is held out of the next
preparation. A run whose preparations never see a second mode is Scan's run, epoch for epoch. (Two earlier forms
cost accuracy on clean data: pruning every top-k_ill pair of the epoch at once and holding them out, as below,
removed the hardest clean pairs for good, 8.7 points below `none` on a clean digits set; taking the epoch's top
k_ill within the paper's cycle ranked by the epoch's losses, not the batch's, and was 0.3-1.2 points below the
paper's rule on four one-mode data sets.) The decision is made again at every preparation epoch.
With fallback "none" (`--prune scan-epoch-or-none`) such a cycle prunes nothing instead: its mutation epochs train
on all the data, so a run whose preparations never see a wrong-pair mode is `none`'s run, epoch for epoch. It
saves compute only where it finds wrong pairs: on data without them, pruning by the paper's rule measured no
better than training less for the same compute (docs/results.md).

The second look (recent_look; `--prune scan-epoch-or-none` has it): one epoch's loss of a wrong caption that differs
from the right one in one word overlaps the hard clean pairs' (the batch it falls in moves it), so no valley forms;
averaged over epochs the noise shrinks and such captions can stand apart (shapes-hard, CLIP, from epoch 6 on). Every
epoch observed then updates each sample's recent loss, r = q where the sample had none, else round-half-up((r + q)
/ 2) (`recent_codes`: weights 1/2, 1/4, ... from the newest epoch that saw it; pruned samples keep theirs), and a
preparation whose own histogram has no wrong-pair mode makes the same cut (`plan`, with the same look_again and
floor) on the histogram of the recent codes of every sample seen so far; ILL and RED are then chosen by those codes.
Where the recent losses have no valley either, an upper mode may still overlap the rest's tail: two normal
distributions are fitted to their histogram (`two_normals`), and when they stand apart (Ashman's separation at least
MIXTURE_SEPARATION: 3.7-4.2 at shapes-hard's preparations with CLIP, at most 2.5 on clean shapes with either loss
after the first epoch) ILL is the codes from where the upper one becomes the likelier (`overlap_cut`), within rho_ill
and above the floor as before.
The recent losses also confirm a mode: one that the preparation's own histogram shows and theirs does not is not
taken yet, and the cycle is the fallback's (early in a run a model can learn one attribute before another: on
shapes-hard with SigLIP, seed 1, the first preparation saw the captions whose colour word is wrong as a mode, gone
from the losses by the next; pruning them then cost 4.3 points against `none`).

Held-out ill-matched pairs (after a preparation with a wrong-pair mode): an ILL candidate is then a
wrong pair, not a hard one, so the variant stops learning from it at once instead of ramping it out.
Mutation epochs prune every ILL candidate and a keyed uniform sample of floor(rate(e) |RED|) of the RED
candidates (the paper's cosine rate, applied to RED only); the next preparation epoch scores the ILL
candidates (they stay in the batches, so the new histogram still holds their mode and a clean pair
flagged by mistake can leave the set) but gives them loss weight 0, the other samples of the batch B /
(B - held) (`held_out_weights`). With mode "redundant" nothing is held out and the mutation epochs are
the paper's.

Scale: each rank keeps the one-byte codes of its own block of ids (rank r of W: ids
[r ceil(N/W), (r + 1) ceil(N/W))), and every rank accumulates the same histogram from the
gathered global batches (the trainer already gathers every rank's losses in preparation epochs).
At the epoch's end every rank has the same t and counts, decides for its block (BLOCK_CHUNK ids at a
time), and the ranks sum their blocks' packed ILL and RED bits in two all-reduces of N/8 bytes (the blocks
are disjoint: the sum is the union); besides the codes, a preparation
fills Scan's two per-batch bitsets (N/8 bytes each, from the chosen ids Scan already brings over in
bulk), and between epochs the state is Scan's two bitsets. No step reads the host: the codes and the
histogram stay on the device. With recent_look each rank also keeps the recent codes of its block (one byte a
sample, N/W bytes, across epochs), the trainer gathers the losses in every epoch, not only in preparations, and
every preparation sums one histogram of NUM_CODES counts over the ranks (the recent codes of an id live on its
block's rank only).
"""
import math
from typing import Optional, Tuple

import numpy as np
import torch

from scan_fast.bits import bits_contain
from scan_fast.keyed_hash import SCAN_EPOCH_TIE, SIGN_BIT, below_fraction, counter_hashes, stream_key
from scan_fast.index import SampleSet
from scan_fast.schedule.candidates import batch_candidates_reference, candidate_count
from scan_fast.schedule.inputs import check_batch, check_int, check_threshold
from scan_fast.schedule.rates import (EARLIEST_MUTATION, PREPARATION, batch_stream, cosine_rate, epoch_phase,
                                      mutation_stream, prune_count)
from scan_fast.schedule.scan import CandidateSets, PrunedSet, Scan

LOG_LO, LOG_HI = math.log(1e-4), math.log(1e4)  # codes span losses 1e-4 .. 1e4 (7.5% a bin)
NUM_CODES = 255                                  # codes 0..254; UNSEEN marks ids not observed
UNSEEN = 255
# what a cycle does after a preparation that finds no wrong-pair mode, and how its log line says it: "paper", the
# paper's per-batch candidates; "none", prune nothing (train on all the data until a preparation finds one)
FALLBACK_NOTES = {"paper": "the paper's per-batch candidates", "none": "nothing pruned this cycle"}
FALLBACKS = tuple(FALLBACK_NOTES)
SMOOTH_BINS = 5       # the box the valley test smooths the histogram with (about 43% of a loss)
VALLEY_RATIO = 0.5   # a valley at most half the upper peak: two modes (the demo's wrong pairs: 0.33 in the
                     # first preparation epoch of shapes, CLIP, seed 0)
BLOCK_CHUNK = 1 << 22        # ids a preparation's end decides at a time (`block_candidates`: ~100 MB of temporaries)
MIXTURE_STEPS = 200          # expectation-maximisation steps of `two_normals` (from Otsu's split)
MIN_VARIANCE = 1.0           # a component narrower than one code (7.5% of a loss) is not resolved
MIXTURE_SEPARATION = 3.5     # Ashman's D of two overlapping modes (`overlap_cut`): the recent losses measured 3.7-4.2
                             # at shapes-hard's preparations with CLIP, at most 2.5 on clean shapes after epoch 0
_EDGES64 = np.exp(LOG_LO + np.arange(NUM_CODES - 1) * (LOG_HI - LOG_LO) / (NUM_CODES - 1))
EDGES = _EDGES64.astype(np.float32)              # 254 increasing float32 edges


# ----------------------------------------------------------------------------- the rule, numpy oracle


def loss_codes(loss_a, loss_b) -> np.ndarray:
    """One byte a sample: the bin of the float32 mean of both directions among EDGES."""
    mean = (np.asarray(loss_a, np.float32) + np.asarray(loss_b, np.float32)) * np.float32(0.5)
    return np.searchsorted(EDGES, mean, side="right").astype(np.uint8)


def recent_codes(recent, codes):
    """Each sample's recent loss after an epoch that saw it (numpy or torch, uint8): its code where it had none
    (UNSEEN), else the mean of the two rounded half up: half weight to the newest epoch, a quarter to the one
    before, and so on."""
    if isinstance(recent, torch.Tensor):
        r, c = recent.to(torch.int16), codes.to(torch.int16)
        return torch.where(r == UNSEEN, c, torch.div(r + c + 1, 2, rounding_mode="floor")).to(torch.uint8)
    r, c = np.asarray(recent, np.int16), np.asarray(codes, np.int16)
    return np.where(r == UNSEEN, c, (r + c + 1) // 2).astype(np.uint8)


def otsu_cut(hist: np.ndarray) -> int:
    """The cut t in 1..len(hist)-1 maximising w0 w1 (m0 - m1)^2 (codes as values); first maximum.
    A histogram with fewer than two non-empty bins gives len(hist) (nothing above)."""
    hist = np.asarray(hist, dtype=np.float64)
    if np.count_nonzero(hist) < 2:
        return len(hist)
    values = np.arange(len(hist), dtype=np.float64)
    w0 = np.cumsum(hist)[:-1]
    s0 = np.cumsum(hist * values)[:-1]
    total, total_s = hist.sum(), (hist * values).sum()
    w1, s1 = total - w0, total_s - s0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (s0 / w0 - s1 / w1) ** 2, -1.0)
    return int(np.argmax(between)) + 1


def _smoothed(hist: np.ndarray) -> np.ndarray:
    return np.convolve(np.asarray(hist, dtype=np.float64), np.ones(SMOOTH_BINS) / SMOOTH_BINS, mode="same")


def upper_peak(hist: np.ndarray, cut: int) -> int:
    """The code of the upper mode's peak above `cut`: the first argmax of the smoothed histogram there."""
    return cut + int(np.argmax(_smoothed(hist)[cut:]))


def has_two_modes(hist: np.ndarray, cut: int) -> bool:
    """Whether the histogram has a second, upper mode beyond a valley around Otsu's `cut` (module docstring):
    the lowest smoothed count between the lower peak and the upper peak is at most VALLEY_RATIO x the upper
    peak. A function of the histogram's shape only: scaling every count leaves it unchanged."""
    hist = np.asarray(hist, dtype=np.float64)
    if cut <= 0 or cut >= len(hist) or not hist[:cut].any() or not hist[cut:].any():
        return False
    smooth = _smoothed(hist)
    low_peak = int(np.argmax(smooth[:cut]))
    high_peak = upper_peak(hist, cut)
    valley = smooth[low_peak:high_peak + 1].min()
    return bool(valley <= VALLEY_RATIO * smooth[high_peak])


def wrong_pair_floor(global_batch: int) -> float:
    """The lowest loss a wrong-pair mode of the CLIP loss may peak at: ln(B) / 2 for a global batch of B.

    A caption of another image scores no higher than a random caption, so its loss is about ln B or more (the
    log-sum-exp of B logits is at least ln B plus their mean); right pairs whose caption has k copies in the
    batch sit at ln k (k <= 4 on the demo's data: at most 1.39), learned ones far lower. Measured on shapes,
    batch 128 (ln B / 2 = 2.43): wrong-pair modes peak at 6.1-23, the copies' mode at 0.65-0.70."""
    return math.log(global_batch) / 2


def take_plan(hist: np.ndarray, k: int, from_top: bool) -> Tuple[int, int, int]:
    """(whole-bin cut c, partial bin p, samples to take from p) for "up to k" from one end.

    from_top: bins >= c whole, then bin p = c - 1 in part; else bins < c whole, then bin p = c.
    """
    hist = np.asarray(hist, dtype=np.int64)
    order = range(len(hist) - 1, -1, -1) if from_top else range(len(hist))
    taken = 0
    for b in order:
        if taken + hist[b] > k:
            return (b + 1 if from_top else b), b, int(k - taken)
        taken += int(hist[b])
    return (0 if from_top else len(hist)), -1, 0


def wrong_pair_cut(hist: np.ndarray, k_ill: int, look_again: bool = False) -> Optional[int]:
    """The cut below the highest loss mode that stands apart and holds at most k_ill samples, or None.

    Otsu's cut of the histogram, when it has two modes (`has_two_modes`) and at most k_ill above. With
    `look_again` (the last preparation found a wrong-pair mode, so the data has one), a first cut with more
    than k_ill above is made again on that part alone, until the part above fits. Long runs need it: pairs
    whose caption has a twin in the batch settle at ln 2, between the learned pairs and the wrong ones, and
    the first cut puts them with the wrong pairs, over the budget (noisy shapes, CLIP, epoch 10 of 30: 46%
    above the first cut, 20%, the wrong pairs, above the second). Not before: on clean shapes the twins
    alone split the same way (40% above the first cut, 25% above the second, its peak at ln 2)."""
    hist = np.asarray(hist, dtype=np.int64)
    lo = 0
    while lo < len(hist):
        part = hist[lo:]
        t = otsu_cut(part)
        if not has_two_modes(part, t):
            return None
        if int(part[t:].sum()) <= k_ill:
            return lo + t
        if not look_again:
            return None
        lo += t  # t >= 1: every look is at a shorter part
    return None


def _weighted_densities(weight, mean, var, codes):
    """Each component's weight x normal density at every code, one row a component (the common 1/sqrt(2 pi) left
    out: only their ratios are used)."""
    return weight[:, None] * np.exp(-0.5 * (codes - mean[:, None]) ** 2 / var[:, None]) / np.sqrt(var)[:, None]


def two_normals(hist: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(weights, means, variances), lower component first, of two normal distributions over the codes fitted to
    the histogram by expectation-maximisation (MIXTURE_STEPS steps from Otsu's split); None for fewer than two
    non-empty bins. Fitted to the 255 counts, not to the samples, so its cost does not grow with the data (no
    library fits a mixture to weighted points: scikit-learn's takes one row a sample)."""
    hist = np.asarray(hist, dtype=np.float64)
    cut = otsu_cut(hist)
    if cut >= len(hist):
        return None
    codes = np.arange(len(hist), dtype=np.float64)
    share = np.stack([codes < cut, codes >= cut]).astype(np.float64)  # each bin's share of each component
    for _ in range(MIXTURE_STEPS):
        counts = share * hist
        size = counts.sum(axis=1)
        if not (size > 0).all():  # one component took every count: one mode
            return None
        weight = size / size.sum()
        mean = (counts * codes).sum(axis=1) / size
        var = np.maximum((counts * (codes - mean[:, None]) ** 2).sum(axis=1) / size, MIN_VARIANCE)
        density = _weighted_densities(weight, mean, var, codes)
        share = density / np.maximum(density.sum(axis=0), np.finfo(np.float64).tiny)
    return weight, mean, var


def separation(mean: np.ndarray, var: np.ndarray) -> float:
    """Ashman's separation sqrt(2) (m1 - m0) / sqrt(v0 + v1) of two fitted normals (`two_normals`)."""
    return math.sqrt(2.0) * (mean[1] - mean[0]) / math.sqrt(var[0] + var[1])


def overlap_cut(hist: np.ndarray, k_ill: int) -> Optional[int]:
    """The cut below an upper mode that overlaps the rest without a valley, or None: the lowest code above the
    lower mean where the upper of `two_normals` is the likelier, when the two stand apart (Ashman's separation
    `separation` at least MIXTURE_SEPARATION) and at most k_ill samples lie above it."""
    fit = two_normals(hist)
    if fit is None:
        return None
    weight, mean, var = fit
    if separation(mean, var) < MIXTURE_SEPARATION:
        return None
    codes = np.arange(len(hist), dtype=np.float64)
    density = _weighted_densities(weight, mean, var, codes)
    upper = np.flatnonzero((density[1] >= density[0]) & (codes > mean[0]))
    if len(upper) == 0 or int(np.sum(hist[upper[0]:])) > k_ill:
        return None
    return int(upper[0])  # above the lower mean, so at least 1


def plan(hist: np.ndarray, n: int, rho_ill: float, rho_red: float, look_again: bool = False,
         min_mode_loss: Optional[float] = None, overlap: bool = False) -> dict:
    """The epoch's cut: ILL = codes >= t, t = `wrong_pair_cut` (a separate upper mode of at most
    k_ill = floor(rho_ill n) samples; with `overlap`, where it finds none, `overlap_cut`) when that mode peaks at a
    loss of at least `min_mode_loss` (None: anywhere; `wrong_pair_floor`), RED from the bottom up to
    k_red = floor(rho_red n), below t. Without such a mode "paper_cycle" is True (the paper's per-batch candidates
    stand) and "cut"/"ill"/"red" are None; "low_peak" is the code of the peak of a mode refused for peaking below
    `min_mode_loss`, else None; "overlapping": the cut is `overlap_cut`'s."""
    hist = np.asarray(hist, dtype=np.int64)
    k_ill, k_red = math.floor(rho_ill * n), math.floor(rho_red * n)
    t = wrong_pair_cut(hist, k_ill, look_again)
    overlapping = overlap and t is None
    if overlapping:
        t = overlap_cut(hist, k_ill)
    low_peak = None
    if t is not None and min_mode_loss is not None:
        peak = upper_peak(hist, t)
        if peak < int(loss_codes(min_mode_loss, min_mode_loss)):  # right pairs (captions with copies), not wrong ones
            low_peak, t = peak, None
    paper_cycle = t is None
    ill = red = None
    if not paper_cycle:
        ill = (t, -1, 0)
        red = take_plan(hist[:t], k_red, from_top=False)  # never reaches the ILL bins
    return {"cut": t, "paper_cycle": paper_cycle, "ill": ill, "red": red, "k_ill": k_ill, "k_red": k_red,
            "low_peak": low_peak, "min_mode_loss": min_mode_loss, "overlapping": overlapping and not paper_cycle}


def decision_note(hist: np.ndarray, p: dict, fallback: str = "paper", recent: bool = False) -> str:
    """One line on a preparation's decision: the wrong-pair mode's size and the loss it starts at (`recent`: found
    in the samples' recent losses), or that the cycle falls back (`fallback`: the paper's per-batch candidates, or
    no pruning)."""
    then = FALLBACK_NOTES[fallback]
    if p["paper_cycle"] and p["low_peak"] is not None:
        return (f"no wrong-pair mode (the upper mode peaks at loss {EDGES[p['low_peak'] - 1]:.3g}, below "
                f"{p['min_mode_loss']:.3g}): {then}")
    if p["paper_cycle"]:
        return f"no wrong-pair mode: {then}"
    where = " in the recent losses" if recent else ""
    how = ", overlapping the rest" if p["overlapping"] else ""
    return f"wrong-pair mode{where}{how}: {_mode_size(hist, p['cut'])}"


def _mode_size(hist: np.ndarray, cut: int) -> str:
    above, n = int(np.sum(hist[cut:])), int(np.sum(hist))
    return f"{above:,} of {n:,} ({above / max(n, 1):.1%}) at loss >= {EDGES[cut - 1]:.3g}"


def transient_note(hist: np.ndarray, p: dict, fallback: str) -> str:
    """The log line of a preparation whose own losses show a wrong-pair mode (`plan` p) that the samples' recent
    losses do not, so its cycle is the fallback's."""
    return (f"a wrong-pair mode in this epoch only, not in the recent losses: {_mode_size(hist, p['cut'])}; "
            f"{FALLBACK_NOTES[fallback]}")


def tie_hashes(ids, seed: int, epoch: int):
    """u(seed, epoch, id) as unsigned-ordered int64 (numpy or torch)."""
    return counter_hashes(stream_key(seed, mutation_stream(epoch), SCAN_EPOCH_TIE), ids) ^ SIGN_BIT


def select(codes, ids, cut: Tuple[int, int, int], from_top: bool, seed: int, epoch: int, count_of_partial: int):
    """Mask over `codes` (numpy or torch) for one side of the plan; ids give the tie hashes."""
    whole, partial, take = cut
    lib = torch if isinstance(codes, torch.Tensor) else np
    c = codes.to(torch.int64) if lib is torch else codes.astype(np.int64)
    seen = c != UNSEEN
    mask = (c >= whole) & seen if from_top else (c < whole)
    if partial >= 0 and take > 0:
        limit = below_fraction(take, count_of_partial)  # u < take / count x 2^64
        mask = mask | ((c == partial) & (tie_hashes(ids, seed, epoch) < limit))
    return mask


def plan_masks(codes, ids, p: dict, hist: np.ndarray, seed: int, epoch: int):
    """(ILL mask, RED mask) over `codes` (numpy or torch; ids give the tie hashes) for a plan with a wrong-pair mode:
    ILL the codes from its cut up, RED up to k_red from the bottom (`hist`: the histogram the plan was made on)."""
    partial = p["red"][1]
    return (select(codes, ids, p["ill"], True, seed, epoch, 0),
            select(codes, ids, p["red"], False, seed, epoch, int(hist[partial]) if partial >= 0 else 0))


def epoch_candidates_reference(ids, loss_a, loss_b, *, rho_ill: float, rho_red: float, seed: int, epoch: int,
                               batch: int, look_again: bool = False, min_mode_loss: Optional[float] = None):
    """The oracle: (ill ids, red ids, plan) of one preparation epoch's observations (each id once, in batches of
    `batch` in this order): the epoch-wide cut when the losses have a wrong-pair mode (`look_again`: the last
    preparation found one) peaking at a loss of at least `min_mode_loss`, else the paper's per-batch candidates
    (`batch_candidates_reference`, Scan's keyed streams)."""
    ids = np.asarray(ids, np.int64)
    loss_a, loss_b = np.asarray(loss_a, np.float32), np.asarray(loss_b, np.float32)
    codes = loss_codes(loss_a, loss_b)
    hist = np.bincount(codes, minlength=NUM_CODES)[:NUM_CODES]
    p = plan(hist, len(ids), rho_ill, rho_red, look_again, min_mode_loss)
    if p["paper_cycle"]:
        ill, red = np.zeros(len(ids), bool), np.zeros(len(ids), bool)
        for index, start in enumerate(range(0, len(ids), batch)):
            part = slice(start, start + batch)
            size = len(ids[part])
            ill[part], red[part] = batch_candidates_reference(
                loss_a[part], loss_b[part], k_ill=candidate_count(size, rho_ill),
                k_red=candidate_count(size, rho_red), seed=seed, stream=batch_stream(epoch, index))
    else:
        ill, red = plan_masks(codes, ids, p, hist, seed, epoch)
    return np.unique(ids[ill]), np.unique(ids[red]), p


def recent_candidates_reference(recent, *, rho_ill: float, rho_red: float, seed: int, epoch: int,
                                look_again: bool = False, min_mode_loss: Optional[float] = None):
    """The oracle of the second look: (ill ids, red ids, plan) of the same cut made on `recent`, every sample's
    recent loss code (`recent_codes` over the epochs that saw it; UNSEEN: none did), or None when those have no
    wrong-pair mode either."""
    recent = np.asarray(recent, np.uint8)
    ids = np.flatnonzero(recent != UNSEEN)
    codes = recent[ids]
    hist = np.bincount(codes, minlength=NUM_CODES)[:NUM_CODES]
    p = plan(hist, len(ids), rho_ill, rho_red, look_again, min_mode_loss, overlap=True)
    if p["paper_cycle"]:
        return None
    ill, red = plan_masks(codes, ids, p, hist, seed, epoch)
    return ids[ill], ids[red], p


def mutation_prune_reference(ill: SampleSet, red: SampleSet, mode: str, rate: float, seed: int,
                             epoch: int, paper_cycle: bool = False) -> SampleSet:
    """The prune set of a mutation epoch at cosine rate `rate`: every ILL candidate (modes "both" and
    "ill_matched") and a keyed uniform sample of floor(rate |RED \\ ILL|) of the RED candidates (modes
    "both" and "redundant"); mode "redundant" alone, and every mode after a one-mode preparation, is the
    paper's draw: floor(rate |candidates|) of the mode's candidates, as Scan draws them."""
    if paper_cycle:
        pool = {"both": ill | red, "ill_matched": ill, "redundant": red}[mode]
        return pool.sample(prune_count(rate, len(pool)), seed, mutation_stream(epoch))
    if mode == "redundant":
        return red.sample(prune_count(rate, len(red)), seed, mutation_stream(epoch))
    if mode == "ill_matched":
        return ill.copy()
    red_only = red - ill
    return ill | red_only.sample(prune_count(rate, len(red_only)), seed, mutation_stream(epoch))


def held_out_weights(held):
    """Loss weights of one batch given its held-out mask (numpy or torch, on the mask's device): 0 where
    held, B / (B - held) elsewhere (all 0 for a batch held out whole), so the kept samples' mean is the
    batch loss."""
    if isinstance(held, torch.Tensor):
        keep = (~held).to(torch.float32)
        return keep * (keep.numel() / keep.sum().clamp_min(1.0))
    keep = (~np.asarray(held, bool)).astype(np.float32)
    return keep * np.float32(keep.size / max(keep.sum(), 1.0))


# ----------------------------------------------------------------------------- the schedule


class ScanEpoch(Scan):
    """SCAN's cycle with epoch-wide candidates (module docstring); the mutation epochs are Scan's.

    ScanEpoch(num_samples, rho_ill=0.35, rho_red=0.35, t_cos=3, prune_threshold=0.3, mode="both",
              seed=0, rank=0, world_size=1, min_mode_loss=None, fallback="paper", recent_look=False)

    min_mode_loss: the lowest loss a wrong-pair mode may peak at (None: anywhere); the trainer gives the CLIP
    loss's `wrong_pair_floor` of its global batch. Derived from the run's batch, so not part of the saved state.
    fallback: a cycle whose preparation finds no wrong-pair mode keeps the paper's per-batch candidates
    ("paper") or prunes nothing ("none"); saved with the state, and a resume must use the same.
    recent_look: observe every epoch's losses and keep each sample's recent loss (`recent_codes`); a preparation
    whose own losses show no wrong-pair mode makes the same cut on the recent losses, or where they have no valley
    the cut between two normals fitted to them (`overlap_cut`), and a mode its own losses show is taken only if the
    recent losses show one too (module docstring). Saved with the state, and a resume must use the same.
    """

    def __init__(self, num_samples, rho_ill=0.35, rho_red=0.35, t_cos=3, prune_threshold=0.3,
                 mode="both", seed=0, rank=0, world_size=1, min_mode_loss=None, fallback="paper",
                 recent_look=False):
        super().__init__(num_samples, rho_ill=rho_ill, rho_red=rho_red, t_cos=t_cos,
                         prune_threshold=prune_threshold, mode=mode, seed=seed)
        self.min_mode_loss = check_threshold("min_mode_loss", min_mode_loss)
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
        self.fallback = fallback
        if not isinstance(recent_look, bool):
            raise ValueError(f"recent_look must be True or False, got {recent_look!r}")
        self.recent_look = recent_look
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.rank = check_int("rank", rank, minimum=0, maximum=self.world_size - 1)
        block = -(-self.num_samples // self.world_size)
        self._lo = min(self.rank * block, self.num_samples)
        self._hi = min(self._lo + block, self.num_samples)
        self._codes = None  # uint8 (hi - lo + 1,) on the losses' device while preparing; last slot: a sink
        self._hist = None   # int64 (NUM_CODES + 1,) of every observed sample of the epoch; last slot: unused
        self._recent = None  # uint8 (hi - lo + 1,) with recent_look: the block's recent loss codes; last slot: a sink
        self._note = (None, "")    # (epoch, text): the last preparation's decision, for its log line
        self._paper_cycle = False  # the last completed preparation found no wrong-pair mode: the fallback's cycle
        self._edges = {}    # device -> EDGES there (copied once, not every step)
        self._held = None   # the ILL bits held out of this preparation epoch's loss (None: nothing held)
        self._held_on = {}  # device -> self._held there

    def min_kept_count(self, epochs: int, global_batch: int) -> int:
        """The fewest ids an epoch can keep: a mutation epoch prunes at most the whole candidate budget."""
        if epochs < EARLIEST_MUTATION + 1:
            return self.num_samples
        rho = {"both": self.config.rho_ill + self.config.rho_red, "ill_matched": self.config.rho_ill,
               "redundant": self.config.rho_red}[self.config.mode]
        return self.num_samples - min(self.num_samples, math.floor(rho * self.num_samples))

    # -- mutation epochs prune every ILL candidate; preparation epochs hold them out of the loss
    def _pruned(self, epoch, position):
        if self._pruned_cache is None or self._pruned_cache.epoch != epoch:
            rate = cosine_rate(position, self.config.t_cos)
            self._pruned_cache = PrunedSet(epoch, mutation_prune_reference(self._ill, self._red, self.config.mode,
                                                                           rate, self.config.seed, epoch,
                                                                           self._paper_cycle))
        return self._pruned_cache.pruned

    def holds_out(self) -> bool:
        """Whether this preparation epoch holds the last preparation's ILL candidates out of the loss."""
        return self._held is not None

    def sample_weights(self, sample_ids):
        """In a preparation epoch after the first: weight 0 for the last preparation's ILL candidates and
        B / (B - held) for the rest of the batch (`held_out_weights`), on the ids' device; else None."""
        if self._held is None:
            return None
        if isinstance(sample_ids, torch.Tensor):
            bits = self._held_on.get(sample_ids.device)
            if bits is None:
                bits = self._held_on[sample_ids.device] = torch.from_numpy(self._held.copy()).to(sample_ids.device)
            return held_out_weights(bits_contain(bits, sample_ids.to(torch.int64)))
        ids = np.asarray(sample_ids, np.int64)
        return held_out_weights(bits_contain(self._held, ids))

    # -- preparation: codes and histogram, on the losses' device (with recent_look, every epoch: recent codes)
    def needs_losses(self, epoch: int) -> bool:
        """Preparation epochs; with recent_look every epoch (each sample's recent loss follows its losses)."""
        return self.recent_look or self.is_preparation(epoch)

    def _begin_epoch(self, epoch):
        super()._begin_epoch(epoch)
        self._hold_for(epoch)
        if self.is_preparation(epoch):
            self._codes, self._hist = None, None

    def _hold_for(self, epoch):
        """Set what `epoch` holds out: the last preparation's ILL bits in a preparation epoch (counted once
        an epoch, never per step)."""
        self._held, self._held_on = None, {}
        if (self.is_preparation(epoch) and self.config.mode != "redundant" and not self._paper_cycle
                and len(self._ill)):
            self._held = self._ill.packed_bits()

    def _buffers(self, device):
        if self._codes is None:
            self._codes = torch.full((self._hi - self._lo + 1,), UNSEEN, dtype=torch.uint8, device=device)
            self._hist = torch.zeros(NUM_CODES + 1, dtype=torch.int64, device=device)
        return self._codes, self._hist

    def _recent_on(self, device):
        if self._recent is None:
            self._recent = torch.full((self._hi - self._lo + 1,), UNSEEN, dtype=torch.uint8, device=device)
        elif self._recent.device != device:  # resumed from a checkpoint read on another device
            self._recent = self._recent.to(device)
        return self._recent

    def _record(self, ids: torch.Tensor, loss_a: torch.Tensor, loss_b: torch.Tensor) -> None:
        """The batch's codes: into the epoch's histogram and this block's codes in a preparation epoch, and with
        recent_look into this block's recent codes."""
        mean = (loss_a.float() + loss_b.float()) * 0.5
        edges = self._edges.get(mean.device)
        if edges is None:
            edges = self._edges[mean.device] = torch.from_numpy(EDGES).to(mean.device)
        code = torch.bucketize(mean, edges, right=True)
        ids = ids.to(code.device, torch.int64)
        own = (ids >= self._lo) & (ids < self._hi)
        slot = torch.where(own, ids - self._lo, self._hi - self._lo)  # others go to the sink slot
        if self._new is not None:
            codes, hist = self._buffers(code.device)
            if codes.device != code.device:  # resumed from a checkpoint read on another device
                self._codes, self._hist = codes, hist = codes.to(code.device), hist.to(code.device)
            hist.index_add_(0, code, torch.ones_like(code))
            codes.index_put_((slot,), code.to(torch.uint8))
        if self.recent_look:
            recent = self._recent_on(code.device)
            recent.index_put_((slot,), recent_codes(recent[slot], code))

    def _observe(self, sample_ids, loss_a, loss_b):
        """Record the batch's codes and collect its per-batch candidates (Scan's, kept if the epoch has one mode);
        returns Scan's (ILL, RED) counts of the batch."""
        if self._new is None and not self.recent_look:
            return 0, 0
        ids, loss_a, loss_b = check_batch(sample_ids, loss_a, loss_b, self.num_samples)
        buffer = self._codes if self._codes is not None else self._recent
        device = buffer.device if buffer is not None else torch.device("cpu")
        self._record(torch.from_numpy(ids).to(device), torch.from_numpy(np.asarray(loss_a, np.float32)).to(device),
                     torch.from_numpy(np.asarray(loss_b, np.float32)).to(device))
        return self._collect(ids, loss_a, loss_b) if self._new is not None else (0, 0)

    def _device_batch(self, sample_ids, loss_a, loss_b):
        """Record the codes on the device; Scan's per-batch chosen ids wait for the next flush."""
        if self._new is None and not self.recent_look:
            return None
        self._record(sample_ids, loss_a, loss_b)
        return super()._device_batch(sample_ids, loss_a, loss_b)  # None outside a preparation epoch

    # -- the epoch's end: one histogram read, one decision per rank block, one union of the blocks' bits
    def block_candidates(self, epoch: int):
        """(ILL, RED) of this rank's block, as SampleSets, from the epoch's histogram (the same on every rank), or
        None when the losses have no wrong-pair mode (the paper's per-batch candidates stand). Decided BLOCK_CHUNK ids
        at a time, so its temporaries (ids, tie hashes, codes: about 24 bytes an id) do not grow with the block."""
        if self._codes is None:
            return SampleSet(self.num_samples), SampleSet(self.num_samples)
        hist = self._hist[:NUM_CODES].cpu().numpy()
        # look_again: this epoch holds out the last preparation's ILL, i.e. that one found a wrong-pair mode (in mode
        # "redundant" nothing is held out, so no second look: ILL is not pruned there anyway)
        p = plan(hist, int(hist.sum()), self.config.rho_ill, self.config.rho_red, look_again=self.holds_out(),
                 min_mode_loss=self.min_mode_loss)
        codes, recent, note = self._codes[:-1], False, None
        if self._recent is not None:  # the second look: the same cut on the recent losses
            seen = self._recent[:-1]
            local = torch.bincount(seen, minlength=UNSEEN + 1)[:NUM_CODES]  # unseen ids: bin UNSEEN, left out
            recent_hist = self._sum_over_ranks(local).cpu().numpy()
            again = plan(recent_hist, int(recent_hist.sum()), self.config.rho_ill, self.config.rho_red,
                         look_again=self.holds_out(), min_mode_loss=self.min_mode_loss, overlap=True)
            if p["paper_cycle"] and not again["paper_cycle"]:
                p, hist, codes, recent = again, recent_hist, seen, True
            elif not p["paper_cycle"] and again["paper_cycle"]:  # this epoch's mode only: not yet taken
                note = transient_note(hist, p, self.fallback)
                p = dict(p, paper_cycle=True)
        self._note = (epoch, note or decision_note(hist, p, self.fallback, recent))
        if p["paper_cycle"]:
            return None
        ill, red = SampleSet(self.num_samples), SampleSet(self.num_samples)
        for start in range(self._lo, self._hi, BLOCK_CHUNK):
            stop = min(start + BLOCK_CHUNK, self._hi)
            ids = torch.arange(start, stop, dtype=torch.int64, device=codes.device)
            ill_mask, red_mask = plan_masks(codes[start - self._lo:stop - self._lo], ids, p, hist, self.config.seed,
                                            epoch)
            ill.add(ids[ill_mask].cpu().numpy())
            red.add(ids[red_mask].cpu().numpy())
        return ill, red

    def epoch_note(self, epoch: int) -> str:
        """The preparation's decision (`decision_note`) at the end of a preparation epoch, else ""."""
        return self._note[1] if self._note[0] == epoch else ""

    def _union_over_ranks(self, block: SampleSet) -> SampleSet:
        """Every rank's block set as one, when this schedule is one of several ranks: its packed bits (N/8 bytes)
        summed over the ranks. The blocks are disjoint, so no bit is set by two ranks and the bytes' sum is their
        union."""
        if self.world_size == 1:
            return block
        import torch.distributed as dist

        bits = torch.from_numpy(block.packed_bits().copy())
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":  # NCCL reduces CUDA only
            bits = bits.to(torch.device("cuda", torch.cuda.current_device()))
        return SampleSet.from_packed_bits(self.num_samples, self._sum_over_ranks(bits).cpu().numpy())

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the ranks in place (one all-reduce), when this schedule is one of several ranks: the
        recent codes' histogram (NUM_CODES counts) and the blocks' packed bits."""
        import torch.distributed as dist

        if self.world_size == 1:
            return values
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == self.world_size):
            raise RuntimeError(f"ScanEpoch(world_size={self.world_size}) needs the process group to combine its "
                               "block with the other ranks'")
        dist.all_reduce(values)
        return values

    def _finish_epoch(self, epoch, epoch_loss):
        phase, _ = epoch_phase(epoch, self._start, self.config.t_cos)
        if phase == PREPARATION:
            found = self.block_candidates(epoch)  # every rank read the same histogram: the same decision
            self._paper_cycle = found is None
            # the epoch-wide cut replaces the per-batch candidates; without a mode, fallback "none" replaces them by none
            if found is not None:
                self._new = CandidateSets(*(self._union_over_ranks(block) for block in found))
            elif self.fallback == "none":
                self._new = CandidateSets(SampleSet(self.num_samples), SampleSet(self.num_samples))
            self._codes = self._hist = None
        return super()._finish_epoch(epoch, epoch_loss)

    def paper_cycle(self) -> bool:
        """Whether the last completed preparation found no separate wrong-pair mode, so its cycle is the fallback's
        (the paper's, or with fallback "none" no pruning)."""
        return self._paper_cycle

    # -- checkpoints: Scan's state plus, inside a preparation epoch, this block's codes
    def _state(self):
        state = super()._state()
        state["kind"] = "ScanEpoch"
        state["world_size"] = self.world_size
        state["codes"] = None if self._codes is None else self._codes.cpu().clone()
        state["hist"] = None if self._hist is None else self._hist.cpu().clone()
        state["paper_cycle"] = self._paper_cycle
        state["fallback"] = self.fallback
        state["recent_look"] = self.recent_look
        state["recent"] = None if self._recent is None else self._recent.cpu().clone()
        return state

    def _parse_state(self, state):
        if state.get("kind") != "ScanEpoch":
            raise ValueError(f"state_dict is for {state.get('kind')}, not ScanEpoch")
        codes, hist = state.get("codes"), state.get("hist")
        paper_cycle = state.get("paper_cycle", False)  # absent from checkpoints written before the test
        if not isinstance(paper_cycle, bool):
            raise ValueError(f"state_dict['paper_cycle'] must be a bool, got {paper_cycle!r}")
        fallback = state.get("fallback", "paper")  # absent from checkpoints written before the choice
        if fallback != self.fallback:
            raise ValueError(f"state_dict was saved by a ScanEpoch with fallback={fallback!r}; this schedule has "
                             f"fallback={self.fallback!r}")
        recent_look = state.get("recent_look")  # absent from checkpoints written before the second look: either
        if recent_look is not None and recent_look != self.recent_look:
            raise ValueError(f"state_dict was saved by a ScanEpoch with recent_look={recent_look!r}; this schedule "
                             f"has recent_look={self.recent_look!r}")
        recent = state.get("recent")
        if recent is not None and state.get("world_size") != self.world_size:
            recent = None  # other blocks on another number of ranks: the recent losses start again
        if recent is not None and (not torch.is_tensor(recent) or recent.shape != (self._hi - self._lo + 1,)
                                   or recent.dtype != torch.uint8):
            raise ValueError("state_dict['recent'] does not fit this rank's block")
        if (codes is None) != (hist is None):
            raise ValueError("state_dict's 'codes' and 'hist' must be both set or both None")
        if codes is not None:
            if state.get("world_size") != self.world_size:
                raise ValueError(f"state_dict was saved inside a preparation epoch by world_size="
                                 f"{state.get('world_size')}; resume it on the same number of ranks "
                                 f"(this schedule has world_size={self.world_size}), or from an epoch's end")
            if not torch.is_tensor(codes) or codes.shape != (self._hi - self._lo + 1,) or codes.dtype != torch.uint8:
                raise ValueError("state_dict['codes'] does not fit this rank's block")
            if not torch.is_tensor(hist) or hist.shape != (NUM_CODES + 1,):
                raise ValueError("state_dict['hist'] is not a histogram of codes")
        scan_state = dict(state, kind="Scan")
        apply_scan = super()._parse_state(scan_state)

        def apply():
            apply_scan()
            self._paper_cycle = paper_cycle
            self._codes = None if codes is None else codes.clone()
            self._hist = None if hist is None else hist.clone()
            self._recent = None if recent is None else recent.clone()
            if self._in_epoch:  # resumed inside an epoch: _begin_epoch will not run for it
                self._hold_for(self._epoch)
            else:
                self._held, self._held_on = None, {}
        return apply
