"""CGRO training (paper Sec. 4.2): rewards (format, accuracy, consistency), the GRPO trainer that feeds the
policy's own ReAL attention to the consistency reward, LoRA targets, data, checkpoints/resume, MLflow.
Entry point: :func:`readl.training.train.train` (``readl train``)."""
