"""Enrichment: localizations, catalog cross-match, event groups and cross-messenger coincidences (issue 9).

* :mod:`broker.enrich.crossmatch` — a HEALPix sky map against a catalog: the searched
  probability and area, 2D and 3D probability densities of
  ``ligo.skymap.postprocess.crossmatch`` (Singer et al. 2016), computed faster;
* :mod:`broker.enrich.volume` — the 3D (distance) part of that cross-match;
* :mod:`broker.enrich.moc` — NUNIQ pixels: order-29 ranges, which pixel holds a position
  (full- or partial-sky maps), the exact integral of a product of two maps;
* :mod:`broker.enrich.points` — an alert's error circle against catalog sources with
  their own errors (circles or ellipses, combined in quadrature);
* :mod:`broker.enrich.inputs` — reading a sky map or a point from an alert file;
* :mod:`broker.enrich.catalogs` — reading catalog files and storing them in
  PostgreSQL with a HEALPix index (``healpix-alchemy``);
* :mod:`broker.enrich.coinc` — GW-GRB coincidences (RAVEN's method);
* :mod:`broker.enrich.cli_catalog` — ``mma-broker catalog`` and ``mma-broker
  crossmatch`` (CLI plugins, entry-point group ``mma_broker.cli``).

Nothing here is imported by the ingest path; numpy, astropy and SQLAlchemy load
inside the functions that need them when a module would otherwise be imported by the
CLI at start-up.
"""
