"""CGRO training (paper Sec. 4.2): rewards (format, accuracy, consistency), the GRPO trainer that feeds the
policy's own ReAL attention to the consistency reward, LoRA targets, data, checkpoints/resume, MLflow.
Entry points: :func:`readl.stages.train.run` (``readl train``), :func:`readl.stages.warmup.run` (``readl warmup``)."""
