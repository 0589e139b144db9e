"""The pipeline's stages, one module each, one linear ``run`` entry each (DVC stage -> module):

========== ================================ =========================================================
stage      module                           writes
========== ================================ =========================================================
curate     :mod:`readl.stages.curate`       ``data/curated/`` (manifests, images, masks, reports)
warmup     :mod:`readl.stages.warmup`       ``models/warmup/``, ``models/warmup_run.json``
train      :mod:`readl.stages.train`        ``models/adapter/``, ``models/train_run.json``
calibrate  :mod:`readl.stages.calibrate`    ``models/thresholds.json`` (+ ``.png``)
evaluate   :mod:`readl.stages.evaluate`     ``metrics.json``, ``plots/``, ``reports/``
register   :mod:`readl.stages.register`     ``models/registered.json`` (MLflow version; ``--promote``: the gate)
(predict)  :mod:`readl.stages.predict`      ``<out>/<stem>.json`` + ``.png`` per image (not a DVC stage)
========== ================================ =========================================================

``readl.cli`` parses the arguments and calls these; the library code they call lives in the packages
(``readl.data``, ``readl.model``, ``readl.localization``, ``readl.training``, ``readl.evaluation``,
``readl.registry``) and :mod:`readl.predictor`. Importing this package imports none of the stages.
"""
