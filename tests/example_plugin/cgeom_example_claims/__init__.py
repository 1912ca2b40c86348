"""A claim package laid out as cgeom-verify's own claims are.

* ``uniform.py`` — a **theorem sheet**: the claim's statement, assumptions, SymPy
  obligations, checks and controls. A new claim family is a new module here.
* ``experiments/uniform.py`` — its **experiment**, one floor below: the subject and the
  switches its controls flip, designs, simulations, figure series. It defines no claim.

The entry point (``pyproject.toml``) names this package, so every module in it is
searched for ``Claim`` objects at its top level.
"""
