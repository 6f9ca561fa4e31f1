"""Hard mode's attribute sampling: near-miss groups, a fixed share of small-detail edits, near-miss counts.

A *group* is a small binary hypercube of attribute combinations. The changed attributes C
(one or two) flip together between two values each: that is the edit. Each of 2 or 3
near-miss attributes U (at least half of them small details, see attributes.SMALL_DETAILS)
takes two values; every other attribute is fixed for the group. Every setting of U gives one
edge (reference, target) along C, its direction drawn at random, so a group of 2^(|U|+1)
images holds 2^|U| edges and every target has |U| near-misses in its group: the targets of
the other edges that differ from it in one attribute of U, which the caption leaves alone
(they differ from the reference in that attribute too). Every image of a group has the same
number of neighbours, so nothing marks an image out as a target or as a near-miss, and
every near-miss is itself the target or reference of another edge.

Within a split every image has its own attribute combination (groups never overlap), so
reference + change still single out one target. Whether an edit touches a small detail is
decided per group so that the running share of edges that do stays at or above 40 % (at most
50 % once the sizes allow, near DETAIL_SHARE = 45 % for large splits).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from data.synthetic.attributes import SMALL_DETAILS

DETAIL_SHARE = 0.45  # the share of edits (edges) that change a small detail (kept within 40-50 %)
COARSE_WEIGHTS = {"colour": 0.34, "pattern": 0.24}  # other coarse attributes 0.2, as in easy mode
P_TWO = 0.4  # the share of edits that change two attributes (FashionIQ, Shoes)
NEAR_SIZES = (2, 3)  # near-miss attributes per group


@dataclass
class Group:
    changed: tuple[str, ...]
    near: tuple[str, ...]
    members: list[int]  # indices into the split's image list
    edges: list[tuple[int, int]]  # (reference, target) along `changed`, one per setting of `near`


class Share:
    """Decides, group by group (a group weighs as many edges as it has), whether its edit changes a
    small detail: the running share of such edges never falls below `low` (the first group is one),
    stays at most `high` where `low` allows, and otherwise keeps closest to `target`."""

    def __init__(self, target: float = DETAIL_SHARE, low: float = 0.40, high: float = 0.50):
        self.target, self.low, self.high, self.hits, self.total = target, low, high, 0, 0

    def want(self, weight: int) -> bool:
        total = self.total + weight
        without, with_ = self.hits / total, (self.hits + weight) / total
        if without < self.low:
            return True
        if with_ > self.high:
            return False
        return abs(with_ - self.target) < abs(without - self.target)

    def add(self, weight: int, hit: bool) -> None:
        self.total += weight
        self.hits += weight if hit else 0


def choose_change(attributes: dict, detail: bool, rng: np.random.Generator, p_two: float) -> tuple[str, ...]:
    """The attributes an edit changes: one small detail (with a coarse one, p_two of the time)
    when `detail`, else one or two coarse attributes (colour most often)."""
    names = list(attributes)
    details = [a for a in names if a in SMALL_DETAILS]
    coarse = [a for a in names if a not in SMALL_DETAILS]
    weights = np.array([COARSE_WEIGHTS.get(a, 0.2) for a in coarse])
    weights = weights / weights.sum()
    two = rng.random() < p_two
    if detail:
        chosen = [details[int(rng.integers(len(details)))]]
        if two:
            chosen.append(coarse[int(rng.choice(len(coarse), p=weights))])
    else:
        chosen = [coarse[int(i)] for i in rng.choice(len(coarse), size=2 if two else 1, replace=False, p=weights)]
    return tuple(a for a in names if a in chosen)  # in the attribute order


def choose_near(attributes: dict, changed: tuple[str, ...], size: int, rng) -> tuple[str, ...]:
    """`size` untouched attributes for the near-misses: two small details where the attributes
    allow (else at least half small details, see sample_groups), the rest any untouched attribute."""
    names = [a for a in attributes if a not in changed]
    details = [a for a in names if a in SMALL_DETAILS]
    k = min(len(details), size, max(2, math.ceil(size / 2)))
    first = [details[int(i)] for i in rng.choice(len(details), size=k, replace=False)]
    rest = [a for a in names if a not in first]
    chosen = first + [rest[int(i)] for i in rng.choice(len(rest), size=size - k, replace=False)]
    return tuple(a for a in attributes if a in chosen)


def sample_groups(attributes: dict[str, tuple[str, ...]], n: int, rng: np.random.Generator, share: Share,
                  p_two: float = P_TWO, near_sizes: tuple[int, ...] = NEAR_SIZES,
                  tries: int = 2000) -> tuple[list[dict], list[Group]]:
    """n attribute combinations, all different, laid out as near-miss groups (the last < 8 are
    ordinary images of no group), in a random order."""
    names = list(attributes)
    used: set[tuple] = set()
    images: list[dict] = []
    groups: list[Group] = []
    while n - len(images) >= 2 ** (near_sizes[0] + 1):
        fits = [s for s in near_sizes if 2 ** (s + 1) <= n - len(images)]
        size = fits[int(rng.integers(len(fits)))]
        detail = share.want(2 ** size)
        changed = choose_change(attributes, detail, rng, p_two)
        while size > near_sizes[0] and math.ceil(size / 2) > sum(
                a in SMALL_DETAILS for a in names if a not in changed):
            size -= 1  # keep at least half of the near-miss attributes small details
        near = choose_near(attributes, changed, size, rng)
        for _ in range(tries):
            fixed = {a: attributes[a][int(rng.integers(len(attributes[a])))] for a in names}
            two = {a: [attributes[a][int(i)] for i in rng.choice(len(attributes[a]), size=2, replace=False)]
                   for a in changed + near}
            combos = {}
            for bits in itertools.product((0, 1), repeat=1 + len(near)):
                a = dict(fixed)
                a.update({c: two[c][bits[0]] for c in changed})
                a.update({u: two[u][b] for u, b in zip(near, bits[1:])})
                combos[bits] = a
            if not any(tuple(a.values()) in used for a in combos.values()):
                break
        else:
            raise ValueError(f"could not place a near-miss group among {len(images)} images of "
                             f"{math.prod(len(v) for v in attributes.values())} combinations; use a smaller --n_images")
        start = len(images)
        index = {bits: start + i for i, bits in enumerate(combos)}
        images += combos.values()
        used.update(tuple(a.values()) for a in combos.values())
        edges = []
        for u_bits in itertools.product((0, 1), repeat=len(near)):
            lo, hi = index[(0, *u_bits)], index[(1, *u_bits)]
            edges.append((lo, hi) if rng.random() < 0.5 else (hi, lo))
        groups.append(Group(changed, near, list(index.values()), edges))
        share.add(len(edges), detail)
    while len(images) < n:  # ordinary images to fill the split
        a = {k: attributes[k][int(rng.integers(len(attributes[k])))] for k in names}
        if tuple(a.values()) not in used:
            used.add(tuple(a.values()))
            images.append(a)
    order = rng.permutation(len(images))
    position = {int(old): new for new, old in enumerate(order)}
    for g in groups:
        g.members = [position[i] for i in g.members]
        g.edges = [(position[r], position[t]) for r, t in g.edges]
    return [images[int(i)] for i in order], groups


def changed_attributes(ref: dict, tgt: dict) -> tuple[str, ...]:
    return tuple(a for a in tgt if ref[a] != tgt[a])


def group_pairs(images: list[dict], groups: list[Group], exclude: set) -> list[tuple[int, int, tuple[str, ...]]]:
    """Every ordered pair of images of a group that differ in one or two attributes (training
    annotations beyond the groups' edges), except the pairs in `exclude`."""
    out = []
    for g in groups:
        for r, t in itertools.permutations(g.members, 2):
            changed = changed_attributes(images[r], images[t])
            if 1 <= len(changed) <= 2 and (r, t) not in exclude:
                out.append((r, t, changed))
    return out


def cross_pairs(attributes: dict, refs: list[dict], targets: list[dict], n: int,
                rng: np.random.Generator) -> list[tuple[int, int, tuple[str, ...]]]:
    """Up to n (reference, target, changed) pairs with the reference in one list and the target in
    another, differing in one attribute (Shoes' triplets that straddle its two image lists)."""
    where = {tuple(a.values()): i for i, a in enumerate(refs)}
    names = list(attributes)
    out, seen = [], set()
    for _ in range(20 * n):
        if len(out) == n:
            break
        t = int(rng.integers(len(targets)))
        attr = names[int(rng.integers(len(names)))]
        value = attributes[attr][int(rng.integers(len(attributes[attr])))]
        if value == targets[t][attr]:
            continue
        r = where.get(tuple({**targets[t], attr: value}.values()))
        if r is not None and (r, t) not in seen:
            seen.add((r, t))
            out.append((r, t, (attr,)))
    return out


def near_misses(gallery: dict[tuple, int], attributes: dict, ref: dict, tgt: dict) -> list[tuple[int, str]]:
    """(gallery index, attribute) of every gallery image equal to the target in the attributes that
    change from ref to tgt and differing from it in exactly one other attribute (`gallery` maps an
    attribute combination, in the order of `attributes`, to its index)."""
    changed = set(changed_attributes(ref, tgt))
    key = [tgt[a] for a in attributes]
    out = []
    for j, attr in enumerate(attributes):
        if attr in changed:
            continue
        for value in attributes[attr]:
            if value != tgt[attr]:
                i = gallery.get(tuple(key[:j] + [value] + key[j + 1:]))
                if i is not None:
                    out.append((i, attr))
    return out


def near_miss_stats(counts: list[int], details: int) -> str:
    """"near-misses per query min/mean/max ..., X % differ in a small detail"."""
    if not counts:
        return "no queries"
    return (f"near-misses per query min {min(counts)} / mean {np.mean(counts):.2f} / max {max(counts)}, "
            f"{100 * details / max(1, sum(counts)):.0f}% of them differ from the target in a small detail")
