"""X-ray acquisition physics for DRRs: tube spectrum, material basis, polychromatic attenuation, scatter, detector.

One algorithm per module: ``spectrum`` (spekpy tube spectrum, binned), ``materials`` (HU → water/bone partial
densities, NIST mass attenuation via xraydb), ``polychromatic`` (material line integrals → spectrum-weighted
transmission), ``scatter`` (kernel scatter-to-primary model, anti-scatter grid), ``detector`` (scintillator
efficiency, quantum + electronic noise, MTF blur) and ``acquisition`` (the chain, its settings, and the ``simple``
monoenergetic mode).
"""
