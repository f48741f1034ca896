"""Follow-up analyses: INTEGRAL SPI-ACS light-curve excess search and upper limits.

Modules: :mod:`followup.lightcurve` (LightCurve, OGIP reader), :mod:`followup.excess`
(excess search, Savchenko et al. 2012), :mod:`followup.response` (SPI-ACS counts to
fluence), :mod:`followup.spiacs` (the analysis entry point), :mod:`followup.plot`,
:mod:`followup.report` and :mod:`followup.cli`. Nothing is imported here, so importing
the package has no side effects and pulls in no heavy dependency.
"""
