"""Enrichment without a server, for filters run on alert files (``mma-broker filters test``).

The enrich stage (:mod:`broker.pipeline.enrich`) needs PostgreSQL: it stores each
localization, keeps event groups and cross-matches catalogs. Offline, this module
gives a filter the parts of ``enrichment`` (``broker/schemas/mma/enriched_event.json``)
that the alert bytes alone determine, computed by the same functions:

* ``localization``: the sky map embedded in the alert (IGWN ``event.skymap``, GCN
  ``healpix_file``) or the Event's error circle, decoded with
  :func:`broker.enrich.localization.extract_localization`; its ``id``
  (:func:`broker.enrich.store.content_id`), credible areas and tile count are those
  :meth:`broker.enrich.store.LocalizationStore.put` would store. An Event without
  one gets its group's best localization (``from_group``), as in the stage.
* ``group``: the revisions seen *in this run* (the files given, in their order), with
  the state :class:`broker.enrich.groups.GroupStore` computes from the same members.
* ``crossmatch`` ``{}`` and ``coincidences`` ``[]``: they need the database.
* ``error``: why a localization was not decoded (a bad sky map), as in the stage.

Nothing here reads the network or a database.
"""

from __future__ import annotations

from typing import Any

from broker.errors import DecodeError
from broker.event import Event
from broker.text import one_line

__all__ = ["OfflineEnricher"]


class OfflineEnricher:
    """Builds the ``enrichment`` of Events decoded from files, keeping their groups in memory.

    Parameters
    ----------
    provenance : Mapping, optional
        Put under ``enrichment["provenance"]`` (component, version, config hash).
    """

    def __init__(self, provenance: dict[str, Any] | None = None) -> None:
        self.provenance = dict(provenance or {})
        self._members: dict[str, list[dict[str, Any]]] = {}
        self._refs: dict[str, Any] = {}

    def localization_ref(self, sky: Any) -> Any:
        """The :class:`broker.enrich.store.LocalizationRef` the store would give ``sky``.

        Parameters
        ----------
        sky : broker.skymap.MultiOrderSkyMap or broker.enrich.localization.PointRegion

        Raises
        ------
        DecodeError
            A sky map the store refuses (:func:`broker.enrich.crossmatch.prepare`).
        """
        from broker.enrich.store import LocalizationRef, _is_point, _prepare_point, content_id

        ref_id = content_id(sky)
        if _is_point(sky):
            return _prepare_point(ref_id, sky)[0]
        from broker.enrich.crossmatch import prepare

        prep = prepare(sky)
        a50, a90 = prep.credible_areas_deg2((0.5, 0.9))
        return LocalizationRef(ref_id, "skymap", float(a50), float(a90), int(prep.uniq.size))

    def enrich(self, event: Event, raw: bytes) -> dict[str, Any]:
        """The ``enrichment`` object of one Event (the module docstring says which parts).

        Parameters
        ----------
        event : broker.event.Event
            Decoded from ``raw``.
        raw : bytes
            The alert file's bytes (for an embedded sky map).

        Returns
        -------
        dict
            Keys ``localization``, ``group``, ``crossmatch``, ``coincidences``,
            ``error``, ``provenance``; JSON-ready.
        """
        from broker.enrich.groups import _state_of, category_of, group_key
        from broker.enrich.localization import extract_localization
        from broker.pipeline.enrich import may_embed_map

        error = None
        ref = None
        try:
            sky = extract_localization(event, raw if may_embed_map(event) else b"")
            if sky is not None:
                ref = self.localization_ref(sky)
        except DecodeError as exc:
            error = f"localization not decoded: {one_line(str(exc), 400)}"
        key = group_key(event)
        members = self._members.setdefault(key, [])
        if ref is not None:
            self._refs[ref.id] = ref
        if all(m["event_id"] != event.id for m in members):  # a replayed Event keeps its first place
            members.append({"event_id": event.id, "alert_type": event.alert_type, "time": event.time,
                            "retraction": event.is_retraction, "localization_id": None if ref is None else ref.id,
                            "area_90_deg2": None if ref is None else ref.area_90_deg2})
        state = _state_of(key, members, category_of(event), self._refs)
        best = state.best_localization
        group = {"key": state.key, "category": state.category,
                 "revision": state.revisions.index(event.id) + 1, "n_revisions": len(state.revisions),
                 "latest": state.latest, "retracted": state.retracted, "t0": state.t0,
                 "best_localization": None if best is None else best.id}
        localization = None
        if ref is not None:
            localization = ref.to_json_dict() | {"from_event": event.id}
        elif best is not None and not event.is_retraction:
            localization = best.to_json_dict() | {"from_event": None, "from_group": key}
        return {"localization": localization, "group": group, "crossmatch": {}, "coincidences": [],
                "error": error, "provenance": dict(self.provenance)}
