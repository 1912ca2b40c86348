"""Experiment machinery, one module per claim family: the floor below the theorem sheets.

A claim module (``claims/<family>.py``) reads like its theorem: statement, assumptions,
obligations, checks and controls. Everything those need besides -- Hypothesis strategies
for the settings, the subject with the switches its controls flip, closed-form
predictions, sample-size designs and batched simulations -- lives here, in
``cgeom_verify.experiments.<family>``, importable by tests and benchmarks. Experiments may
import the kernels, the harness's statistics (``stats``, ``Profiled``), ``figures`` and
``settings.derive_seed``; they define no ``Claim`` and import no theorem sheet
(docs/writing-a-claim.md, "Where things go").
"""
