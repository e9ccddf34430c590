"""The speed/quality front of a bench: which rows no other row beats, and which cachekit row
weakly dominates each peer's point (no more FLOPs, no less PSNR)."""

from __future__ import annotations

from typing import Any, Sequence

#: A row's family for plots and the dominance table: its policy or peer method, settings dropped.
def family(row: dict) -> str:
    return row.get("family") or row["name"].split(" (")[0].split(" threshold")[0].split(" interval")[0].split(" budget")[0]


def _point(row: dict) -> tuple[float, float] | None:
    if row.get("error") or row.get("compute_fraction") is None or row.get("psnr") is None:
        return None
    return row["compute_fraction"], row["psnr"]


def pareto(rows: Sequence[dict]) -> list[dict]:
    """The rows no other row beats: none has fewer or equal FLOPs and more or equal PSNR, one of them strictly."""
    points = [(r, _point(r)) for r in rows if r.get("source") != "uncached"]
    points = [(r, p) for r, p in points if p is not None]
    return [r for r, (f, q) in points
            if not any((f2 <= f and q2 >= q) and (f2 < f or q2 > q) for _, (f2, q2) in points)]


#: The PSNR a bench caps identical clips at: a peer point there with all the FLOPs did nothing.
IDENTICAL_DB = 100.0


def dominance(rows: Sequence[dict], ours: str = "cachekit") -> list[dict]:
    """For each peer row, the cachekit rows with no more FLOPs and no less PSNR: the one with the
    fewest FLOPs among the best PSNR margin is named (None: no cachekit row dominates it). A peer
    that computed everything and gave the uncached clips is marked ``did_nothing``."""
    mine = [(r, _point(r)) for r in rows if r.get("source") == ours]
    mine = [(r, p) for r, p in mine if p is not None]
    table = []
    for peer in rows:
        point = _point(peer)
        if peer.get("source") in (ours, "uncached") or point is None:
            continue
        flops, quality = point
        if flops >= 1.0 and quality >= IDENTICAL_DB:  # the peer changed nothing: no point to beat
            table.append({"peer": peer["name"], "peer_fraction": flops, "peer_psnr": quality, "by": None,
                          "fraction": None, "psnr": None, "margin_db": None, "did_nothing": True})
            continue
        winners = [(r, p) for r, p in mine if p[0] <= flops and p[1] >= quality]
        best = max(winners, key=lambda rp: (rp[1][1] - quality, -rp[1][0]), default=None)
        table.append({"peer": peer["name"], "peer_fraction": flops, "peer_psnr": quality,
                      "by": best[0]["name"] if best else None,
                      "fraction": best[1][0] if best else None, "psnr": best[1][1] if best else None,
                      "margin_db": best[1][1] - quality if best else None})
    return table


def dominance_markdown(table: Sequence[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| peer point | FLOPs | PSNR dB | dominated by (cachekit) | FLOPs | PSNR dB | margin dB |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        if t.get("did_nothing"):
            lines.append(f"| {t['peer']} | {t['peer_fraction']:.3f} | identical | did nothing on this model | | | |")
        elif t["by"] is None:
            lines.append(f"| {t['peer']} | {t['peer_fraction']:.3f} | {t['peer_psnr']:.2f} | none | | | |")
        else:
            lines.append(f"| {t['peer']} | {t['peer_fraction']:.3f} | {t['peer_psnr']:.2f} | {t['by']} | "
                         f"{t['fraction']:.3f} | {t['psnr']:.2f} | {t['margin_db']:+.2f} |")
    return "\n".join(lines) + "\n"


def budget_table(rows: Sequence[dict], prefix: str = "tuned budget ") -> list[dict]:
    """For each tuned row (named ``prefix`` + its budget), the best other row at no more FLOPs than
    the budget (highest PSNR; any source) and the tuned row's margin over it in dB."""
    table = []
    for row in rows:
        point = _point(row)
        if not row["name"].startswith(prefix) or point is None:
            continue
        budget = float(row["name"][len(prefix):])
        others = [(r, p) for r, p in ((r, _point(r)) for r in rows if not r["name"].startswith(prefix)
                                      and r.get("source") != "uncached") if p is not None and p[0] <= budget + 1e-9]
        best = max(others, key=lambda rp: (rp[1][1], -rp[1][0]), default=None)
        table.append({"budget": budget, "fraction": point[0], "psnr": point[1], "predicted_psnr": row.get("predicted_psnr"),
                      "best": best[0]["name"] if best else None, "best_fraction": best[1][0] if best else None,
                      "best_psnr": best[1][1] if best else None, "margin_db": point[1] - best[1][1] if best else None})
    return table


def budget_markdown(table: Sequence[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| budget | tuned FLOPs | tuned PSNR dB (held out) | predicted dB | best other row within the budget | FLOPs "
             "| PSNR dB | margin dB |",
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        predicted = f"{t['predicted_psnr']:.2f}" if t["predicted_psnr"] is not None else "n/a"
        other = (f"{t['best']} | {t['best_fraction']:.3f} | {t['best_psnr']:.2f} | {t['margin_db']:+.2f}"
                 if t["best"] is not None else "none | | |")
        lines.append(f"| {t['budget']:g} | {t['fraction']:.3f} | {t['psnr']:.2f} | {predicted} | {other} |")
    return "\n".join(lines) + "\n"
