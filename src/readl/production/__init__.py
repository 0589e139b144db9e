"""The production loop (README "Production loop"): new images in, inspectors' verdicts out, labels back.

:mod:`.store` (the SQLAlchemy tables), :mod:`.intake` (new images by content hash), :mod:`.inspection` (a shard
predicted by the champion), :mod:`.review` (the inspectors' web page), :mod:`.feedback` (verdicts -> an
image-level curate source) and :mod:`.agreement` (decisions vs verdicts per model version). The Prefect flow is
``flows/inspect_images.py``; the commands are ``readl review`` and ``readl feedback export``.
"""
