"""Print one line about an enriched superevent read from `mma-broker subscribe mma.events.enriched --json`.

Used by deploy/quickstart.sh: ``... --json | python deploy/enriched_line.py MS181101ab``.
Takes the last revision of that upstream id whose enrichment holds a stored sky map and
prints its group, its stored map (content-addressed: the revisions that carry the same
map share it), the credible areas, and the catalog galaxies inside its credible volume.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    want = sys.argv[1]
    best = None
    for line in sys.stdin:
        try:
            doc = json.loads(line).get("document") or {}
        except ValueError:
            continue
        enr = doc.get("enrichment") or {}
        if doc.get("upstream_id") == want and (enr.get("localization") or {}).get("kind") == "skymap":
            best = doc
    if best is None:
        print(f"{want}: no enriched revision with a sky map on the topic")
        return
    enr = best["enrichment"]
    loc, group = enr["localization"], enr["group"]
    parts = [f"{want} (group {group['key']}: {group['n_revisions']} revisions"
             f"{', retracted' if group['retracted'] else ''}): sky map {loc['id'][:19]}..., 50%/90% areas "
             f"{loc['area_50_deg2']:.1f}/{loc['area_90_deg2']:.1f} deg2, {loc['n_tiles']:,} tiles stored"]
    for name, m in (enr.get("crossmatch") or {}).items():
        if m.get("kind") != "skymap":
            continue
        top = m["matches"][0] if m["matches"] else None
        inside = f"{m['n_inside']} {name} galaxies inside the {m['level']:.0%} {'volume' if m['three_d'] else 'area'}"
        if top is not None:
            dist = f" at {top['dist_mpc']:.0f} Mpc" if top.get("dist_mpc") is not None else ""
            inside += f", most probable {top.get('name') or 'row ' + str(top['row'])}{dist}"
        parts.append(inside)
    if enr.get("coincidences"):
        parts.append(f"coincidences: {', '.join(enr['coincidences'])}")
    print("; ".join(parts))


if __name__ == "__main__":
    main()
